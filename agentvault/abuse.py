"""Abuse escalation: authentication failures per client IP and per device.

Every refused credential (a REST bearer token, a signed challenge, a relay
socket's token) is counted in the shared cache with django-ratelimit's fixed
windows, under two keys: the client address and, where it is known from a
trusted source, the device. The failure that reaches a key's threshold
(``ABUSE["IP_FAILURE_RATE"]``, ``ABUSE["DEVICE_FAILURE_RATE"]``) is a spike:

- the key is blocked for ``ABUSE["BLOCK_SECONDS"]``: further requests from
  that address (or for that device) get 429 ``rate_limited`` with
  ``Retry-After``, before any token is looked at;
- one ``security.auth_failure_spike`` audit event is written per block, in
  the tenant concerned, and ``AUTH_FAILURE_SPIKES`` moves.

Which tenant hears about a spike:

- a device spike: the device's tenant, from the device directory;
- an address spike: the tenant of the failure that crossed the threshold
  when that tenant is known from something the server trusts (a token whose
  signature verified, a device named in a token request that exists);
- otherwise (forged or unsigned tokens) no tenant: a warning log line and
  the metric only. Claims of a token whose signature failed are never used
  to pick a tenant, or anyone could write alerts into any tenant's trail.

With the cache unreachable, nothing is counted or blocked (logged): an
outage of Redis must not refuse every authenticated request.

Devices are counted only when their id comes from a verified token or names
an existing device, so random ids cannot fill the cache. The device block
applies where a device is named before any token work (the challenge and
token endpoints); REST and WebSocket requests check the address block.

The relay socket is covered by ``AuthFailureGuard`` (wired in
``agentvault.routing``): it refuses blocked addresses with close code 4429
before the consumer runs, and counts a 4401 refusal of a socket that
offered a token. The consumer may call ``anote_websocket_auth_failure``
instead, to add the device; the guard then does not count the same socket
again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django_ratelimit.core import get_usage

from agentvault import context
from agentvault.errors import RateLimitedError
from agentvault.observability.metrics import (
    AUTH_FAILURE_SPIKES,
    AUTH_FAILURES,
    RATE_LIMITED,
)

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "IP_FAILURE_RATE": "20/10m",
    "DEVICE_FAILURE_RATE": "10/10m",
    "BLOCK_SECONDS": 600,
}

SPIKE_ACTION = "security.auth_failure_spike"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_RATE_LIMITED = 4429
SCOPE_KEY = "agentvault.abuse"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def abuse_option(name: str) -> Any:
    """Return option ``name`` of ``settings.ABUSE``, read at call time."""
    configured = getattr(settings, "ABUSE", {}) or {}
    return configured.get(name, DEFAULTS[name])


@dataclasses.dataclass(frozen=True)
class AuthFailure:
    """One refused credential and what is known about its target.

    ``tenant_id`` must come from a trusted source (a verified token or the
    device directory), never from unverified claims.
    """

    transport: str
    reason: str
    ip: str | None
    device_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None


def _block_key(kind: str, value: str) -> str:
    return f"abuse:block:{kind}:{value}"


def _keys(ip: str | None, device_id: uuid.UUID | None) -> list[str]:
    keys = [_block_key("ip", ip)] if ip else []
    if device_id is not None:
        keys.append(_block_key("device", str(device_id)))
    return keys


def get_block_seconds(
    *, ip: str | None, device_id: uuid.UUID | None = None
) -> float | None:
    """Return the seconds left of the address's or device's block, or None."""
    keys = _keys(ip, device_id)
    if not keys:
        return None
    try:
        found = cache.get_many(keys)
    except Exception:
        # The cache (Redis) is down: serve rather than refuse everyone.
        logger.exception("Abuse block check skipped: cache unavailable")
        return None
    deadlines = [float(value) for value in found.values()]
    left = max(deadlines, default=0.0) - time.time()
    return left if left > 0 else None


def check_not_blocked(*, ip: str | None, device_id: uuid.UUID | None = None) -> None:
    """Raise ``RateLimitedError`` while the address or device is blocked."""
    left = get_block_seconds(ip=ip, device_id=device_id)
    if left is None:
        return
    RATE_LIMITED.labels(limit="auth_failures").inc()
    raise RateLimitedError(retry_after=math.ceil(left))


def check_request_not_blocked(
    request: HttpRequest, *, device_id: uuid.UUID | None = None
) -> None:
    """Raise ``RateLimitedError`` while the caller's address is blocked."""
    check_not_blocked(ip=context.request_client_ip(request), device_id=device_id)


def blocked_response(request: HttpRequest) -> JsonResponse | None:
    """Return the 429 envelope for a blocked address, outside DRF; else None."""
    try:
        check_request_not_blocked(request)
    except RateLimitedError as error:
        body = {"code": error.error_code, "message": error.message, "fields": {}}
        response = JsonResponse(body, status=error.status)
        for name, value in error.headers().items():
            response[name] = value
        return response
    return None


def _count(kind: str, value: str) -> tuple[int, int, int]:
    """Count one failure of ``value``; return (count, threshold, window)."""
    rate = abuse_option("IP_FAILURE_RATE" if kind == "ip" else "DEVICE_FAILURE_RATE")
    try:
        usage = get_usage(
            None,
            group=f"abuse.auth_failures.{kind}",
            key=lambda group, request: value,
            rate=rate,
            increment=True,
        )
    except Exception:
        logger.exception("Auth failure not counted: cache unavailable")
        return 0, 0, 0
    if usage is None or usage["time_left"] < 0:
        return 0, 0, 0  # counting off, or the cache failed: no escalation
    return int(usage["count"]), int(usage["limit"]), int(usage["time_left"])


def do_note_auth_failure(failure: AuthFailure) -> list[str]:
    """Count a refused credential; escalate the keys it pushes over.

    Return the kinds (``ip``, ``device``) that spiked with this failure.
    A device is counted only when its tenant is known (so it exists).
    """
    from enrollment.directory import get_device_tenant

    device_tenant = None
    if failure.device_id is not None:
        device_tenant = failure.tenant_id or get_device_tenant(failure.device_id)

    keys: list[tuple[str, str, uuid.UUID | None]] = []
    if failure.ip:
        keys.append(("ip", failure.ip, failure.tenant_id or device_tenant))
    if failure.device_id is not None and device_tenant is not None:
        keys.append(("device", str(failure.device_id), device_tenant))

    spiked = []
    for kind, value, tenant_id in keys:
        count, threshold, _ = _count(kind, value)
        if threshold <= 0 or count < threshold:
            continue
        if _start_block(kind, value):
            do_record_auth_failure_spike(
                kind, value, failure=failure, count=count, tenant_id=tenant_id
            )
            spiked.append(kind)
    return spiked


def _start_block(kind: str, value: str) -> bool:
    """Block the key; return False when another failure blocked it first."""
    seconds = int(abuse_option("BLOCK_SECONDS"))
    return bool(cache.add(_block_key(kind, value), time.time() + seconds, seconds))


def do_record_auth_failure_spike(
    kind: str,
    value: str,
    *,
    failure: AuthFailure,
    count: int,
    tenant_id: uuid.UUID | None,
) -> None:
    """Record a spike: metric, warning and, with a tenant, its audit event."""
    import audit
    from tenants.scope import tenant_scope

    AUTH_FAILURE_SPIKES.labels(kind=kind).inc()
    logger.warning(
        "Authentication failure spike (%s): %d failures, blocked",
        kind,
        count,
        extra={
            "client_ip": failure.ip,
            "device_id": str(failure.device_id) if failure.device_id else None,
            "tenant_id": str(tenant_id) if tenant_id else None,
            "transport": failure.transport,
            "reason": failure.reason,
            "count": count,
        },
    )
    if tenant_id is None:
        return

    target = ("device", value) if kind == "device" else ("ip", value)
    details = {
        "key": kind,
        "failures": count,
        "block_seconds": int(abuse_option("BLOCK_SECONDS")),
        "transport": failure.transport,
        "reason": failure.reason,
    }
    # The request may already run in another tenant's scope (a token of one
    # tenant aimed at a device of another); the alert belongs to the target.
    with tenant_scope(tenant_id, allow_switch=True):
        audit.record(
            SPIKE_ACTION,
            actor="system",
            target=target,
            details=details,
            client_ip=failure.ip,
        )


# --- WebSocket ---------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key == name:
            return bytes(value).decode("latin1")
    return None


def scope_client_ip(scope: Scope) -> str | None:
    """Return the client address of an ASGI scope, like for requests."""
    client = scope.get("client") or (None, None)
    return context.get_client_ip(
        client[0],
        _header(scope, b"x-forwarded-for"),
        settings.AGENTVAULT["TRUSTED_PROXIES"],
    )


def _scope_state(scope: Scope) -> dict[str, bool]:
    state = scope.get(SCOPE_KEY)
    if not isinstance(state, dict):
        state = {"noted": False}
        scope[SCOPE_KEY] = state
    return state


def note_websocket_auth_failure(
    scope: Scope,
    *,
    reason: str,
    device_id: uuid.UUID | None = None,
    tenant_id: uuid.UUID | None = None,
) -> list[str]:
    """Count a relay socket's refused token (once per socket).

    ``device_id`` and ``tenant_id`` only from a verified token. Return the
    kinds that spiked.
    """
    state = _scope_state(scope)
    if state["noted"]:
        return []
    state["noted"] = True
    AUTH_FAILURES.labels(transport="websocket", reason=reason).inc()
    failure = AuthFailure(
        transport="websocket",
        reason=reason,
        ip=scope_client_ip(scope),
        device_id=device_id,
        tenant_id=tenant_id,
    )
    return do_note_auth_failure(failure)


async def anote_websocket_auth_failure(
    scope: Scope,
    *,
    reason: str,
    device_id: uuid.UUID | None = None,
    tenant_id: uuid.UUID | None = None,
) -> list[str]:
    """Async twin of ``note_websocket_auth_failure`` for the consumer."""
    spiked: list[str] = await database_sync_to_async(note_websocket_auth_failure)(
        scope, reason=reason, device_id=device_id, tenant_id=tenant_id
    )
    return spiked


def _offers_token(scope: Scope) -> bool:
    """Return whether a socket carries a token (header, subprotocol, query)."""
    if (_header(scope, b"authorization") or "").lower().startswith("bearer "):
        return True
    if any(str(p).startswith("bearer.") for p in scope.get("subprotocols") or []):
        return True
    return b"token=" in bytes(scope.get("query_string") or b"")


class AuthFailureGuard:
    """ASGI middleware of the relay: refuse blocked addresses, count refusals.

    A blocked address gets the socket accepted and closed with 4429 before
    the inner application (and its token checks) runs. A socket that
    offered a token and is closed with 4401 before any frame was sent counts
    as one authentication failure of its address.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guard one WebSocket connection; pass other protocols through."""
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return

        # Blocked: answer before any token work.
        ip = scope_client_ip(scope)
        left = await sync_to_async(get_block_seconds, thread_sensitive=False)(ip=ip)
        if left is not None:
            RATE_LIMITED.labels(limit="auth_failures").inc()
            await self._refuse(receive, send)
            return

        scope = dict(scope)
        state = _scope_state(scope)
        offered = _offers_token(scope)
        framed = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal framed
            kind = message.get("type")
            if kind == "websocket.send":
                framed = True
            elif kind == "websocket.close" and not framed and offered:
                if message.get("code") == CLOSE_UNAUTHENTICATED and not state["noted"]:
                    await anote_websocket_auth_failure(scope, reason="invalid_token")
            await send(message)

        await self.app(scope, receive, guarded_send)

    @staticmethod
    async def _refuse(receive: Receive, send: Send) -> None:
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_RATE_LIMITED})
