"""The REST transport: error envelopes become SDK errors with the server's code."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from agentvault_client.api import ApiClient
from agentvault_client.errors import (
    ApiError,
    AuthError,
    DeviceMismatchError,
    NotFoundError,
    RateLimitedError,
    StaleDevicesError,
    TransportError,
    UnauthorizedError,
)


def _client(handler: Any, tokens: Any = None) -> ApiClient:
    return ApiClient(
        "http://server.test", tokens=tokens, transport=httpx.MockTransport(handler)
    )


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _error(status: int, code: str, **fields: Any) -> httpx.Response:
    body = {"code": code, "message": "refused", "fields": fields}
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (409, "device_mismatch", DeviceMismatchError),
        (410, "stale_devices", StaleDevicesError),
        (404, "not_found", NotFoundError),
        (400, "invalid_invite", ApiError),
        (429, "rate_limited", RateLimitedError),
    ],
)
def test_it_maps_the_error_envelope_to_the_error_tree(
    status: int, code: str, cls: type[ApiError]
) -> None:
    client = _client(lambda request: _error(status, code, missing=["d1"]))

    with pytest.raises(cls) as caught:
        _run(client.post("/x", {}, auth=False, retries=0))

    assert caught.value.code == code
    assert caught.value.status == status
    assert caught.value.fields == {"missing": ["d1"]}
    assert "refused" not in repr(caught.value) or code in repr(caught.value)


def test_it_renews_a_refused_token_once() -> None:
    seen: list[str] = []
    asked: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer old":
            return _error(401, "invalid_token")
        return httpx.Response(200, json={"ok": True})

    async def tokens(fresh: bool) -> str:
        asked.append(fresh)
        return "new" if fresh else "old"

    assert _run(_client(handler, tokens).get("/devices/me")) == {"ok": True}
    assert seen == ["Bearer old", "Bearer new"]
    assert asked == [False, True]


def test_a_token_refused_twice_is_an_auth_error() -> None:
    async def tokens(fresh: bool) -> str:
        return "token"

    client = _client(lambda request: _error(401, "invalid_token"), tokens)
    with pytest.raises(UnauthorizedError) as caught:
        _run(client.get("/devices/me"))
    assert isinstance(caught.value, AuthError)
    assert "token" not in str(caught.value)


def test_it_retries_after_a_short_rate_limit() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            response = _error(429, "rate_limited")
            response.headers["Retry-After"] = "0"
            return response
        return httpx.Response(201, json={"message_id": "m"})

    assert _run(_client(handler).post("/x", {}, auth=False)) == {"message_id": "m"}
    assert len(calls) == 2


def test_an_unreachable_server_is_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(TransportError) as caught:
        _run(_client(handler).get("/rooms", auth=False))
    assert caught.value.code == "transport_error"


def test_json_bodies_go_to_the_api_prefix() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/enrollments"
        assert json.loads(request.content) == {"a": 1}
        assert "Authorization" not in request.headers
        return httpx.Response(201, json={"device_id": "d"})

    assert _run(_client(handler).post("/enrollments", {"a": 1}, auth=False)) == {
        "device_id": "d"
    }
