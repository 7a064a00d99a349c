"""Per-request context: correlation id and client IP, behind trusted proxies.

The values live in context variables, so audit records and log lines written
anywhere during a request (or a consumer's handler) carry them without
passing them around.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
client_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "client_ip", default=None
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def _networks(
    entries: Iterable[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def _is_trusted(
    address: str, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def get_client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted_proxies: Iterable[str]
) -> str | None:
    """Return the client address, trusting ``X-Forwarded-For`` only via proxies.

    The header is read right to left, skipping trusted proxies; the first
    address that is not a trusted proxy is the client. A client cannot reset
    its identity by sending its own header, because anything it wrote sits
    left of what the trusted proxy appended.
    """
    trusted = _networks(trusted_proxies)
    if not remote_addr or not trusted or not _is_trusted(remote_addr, trusted):
        return remote_addr or None

    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote_addr
    return remote_addr


def request_client_ip(request: HttpRequest) -> str | None:
    """Return the client IP of a Django request."""
    return get_client_ip(
        request.META.get("REMOTE_ADDR"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        settings.AGENTVAULT["TRUSTED_PROXIES"],
    )


def request_correlation_id(request: HttpRequest) -> str:
    """Return the request's correlation id: a trusted proxy's, else a new one."""
    offered = request.META.get("HTTP_X_REQUEST_ID", "")
    trusted = _networks(settings.AGENTVAULT["TRUSTED_PROXIES"])
    remote = request.META.get("REMOTE_ADDR", "")
    if offered and _REQUEST_ID.match(offered) and _is_trusted(remote, trusted):
        return str(offered)
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Bind the correlation id and client IP for the request; echo the id."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_correlation_id(request)
        ip = request_client_ip(request)
        request.correlation_id = request_id  # type: ignore[attr-defined]
        request.client_ip = ip  # type: ignore[attr-defined]
        id_token = correlation_id.set(request_id)
        ip_token = client_ip.set(ip)
        try:
            response = self.get_response(request)
        finally:
            correlation_id.reset(id_token)
            client_ip.reset(ip_token)
        response["X-Request-ID"] = request_id
        return response
