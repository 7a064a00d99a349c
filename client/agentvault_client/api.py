"""Call the AgentVault REST API over httpx and turn failures into SDK errors.

Every failure the server returns is the envelope ``{code, message, fields}``;
:func:`error_from_response` maps it onto the SDK's exception tree, keeping
the server's stable ``code``. Tokens travel only in the ``Authorization``
header and are never logged or put into an exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from agentvault_client.errors import (
    ApiError,
    ConflictError,
    DeviceMismatchError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    StaleDevicesError,
    TransportError,
    UnauthorizedError,
)

__all__ = ["API_PREFIX", "ApiClient", "TokenSource", "error_from_response"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
#: Longest server hint honoured before a rate-limited call is retried.
MAX_RETRY_AFTER = 10.0

#: Return a bearer token; ``True`` asks for a fresh one (the last was refused).
TokenSource = Callable[[bool], Awaitable[str]]

_BY_CODE: dict[str, type[ApiError]] = {
    "device_mismatch": DeviceMismatchError,
    "stale_devices": StaleDevicesError,
    "payload_too_large": PayloadTooLargeError,
}
_BY_STATUS: dict[int, type[ApiError]] = {
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """Return the SDK error for a failed response (the body is not kept)."""
    code, message, fields = None, None, {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = body.get("message") if isinstance(body.get("message"), str) else None
        if isinstance(body.get("fields"), dict):
            fields = body["fields"]
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(response.status_code, ApiError)
    return cls(
        message or f"The server answered HTTP {response.status_code}.",
        code=code,
        status=response.status_code,
        fields=fields,
        retry_after=_retry_after(response),
    )


class ApiClient:
    """Send JSON requests to one server, with a device token when needed."""

    def __init__(
        self,
        base_url: str,
        *,
        tokens: TokenSource | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Create the client for ``base_url``; ``tokens`` supplies bearer tokens."""
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def __repr__(self) -> str:
        """Return the server URL only."""
        return f"ApiClient({self.base_url!r})"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
        retries: int = 3,
    ) -> Any:
        """Send one request under ``/api/v1`` and return the decoded JSON.

        A refused token is renewed once; a 429 with a short ``Retry-After``
        is retried up to ``retries`` times. Other failures raise.
        """
        url = API_PREFIX + path
        fresh = False
        attempt = 0
        while True:
            headers = {}
            if auth:
                if self._tokens is None:
                    raise UnauthorizedError("No credentials are configured.")
                headers["Authorization"] = "Bearer " + await self._tokens(fresh)
            try:
                response = await self._http.request(
                    method, url, json=json, params=params, headers=headers
                )
            except httpx.HTTPError as exc:
                logger.info("%s %s failed: %s", method, path, type(exc).__name__)
                raise TransportError(
                    f"Cannot reach {self.base_url} ({type(exc).__name__})."
                ) from None

            if response.status_code < 400:
                if response.status_code == 204 or not response.content:
                    return None
                try:
                    return response.json()
                except ValueError:
                    raise ApiError(
                        "The server sent a response that is not JSON.",
                        status=response.status_code,
                    ) from None

            error = error_from_response(response)
            if isinstance(error, UnauthorizedError) and auth and not fresh:
                fresh = True
                continue
            if (
                isinstance(error, RateLimitedError)
                and attempt < retries
                and (error.retry_after or 1.0) <= MAX_RETRY_AFTER
            ):
                attempt += 1
                await asyncio.sleep(error.retry_after or 1.0)
                continue
            raise error

    async def get(self, path: str, **kwargs: Any) -> Any:
        """Send a GET request."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        """Send a POST request with a JSON body."""
        return await self.request("POST", path, json=json, **kwargs)

    async def put(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        """Send a PUT request with a JSON body."""
        return await self.request("PUT", path, json=json, **kwargs)
