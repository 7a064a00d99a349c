"""Middleware of the observability package.

Order in ``MIDDLEWARE``:

1. ``ProbeMiddleware`` first: answers ``/healthz``, ``/readyz`` and
   ``/metrics`` before sessions, host checks and the tenant transaction;
2. ``RequestLogMiddleware`` right after ``RequestContextMiddleware``: one
   ``request_started`` and one ``request_finished`` (or ``request_failed``)
   line per request, with method, path (never the query string), route,
   status, duration and the error code; it also feeds the HTTP histogram;
3. ``LogIdentityMiddleware`` right after ``TenantScopeMiddleware``: binds
   the tenant, member and device of the request to every later log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django_structlog import signals as structlog_signals
from django_structlog.middlewares import RequestMiddleware

from agentvault.observability import metrics
from agentvault.observability.logging import bind_log_context
from agentvault.observability.views import PROBES


class ProbeMiddleware:
    """Serve the probe and metrics paths without the rest of the stack."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path_info)
        if view is not None and request.method in ("GET", "HEAD"):
            return view(request)
        return self.get_response(request)


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    return str(route) if route else "unmatched"


class RequestLogMiddleware(RequestMiddleware):
    """django-structlog's request lines, without query strings or user agents.

    The request id it binds is replaced on every line by the correlation id
    of ``agentvault.context`` (see ``logging.add_request_context``), so the
    ``X-Request-ID`` echoed to the client is the id in the logs.
    """

    def prepare(self, request: HttpRequest) -> None:
        """Note the start time, then log ``request_started``."""
        request._av_started = time.monotonic()  # type: ignore[attr-defined]
        super().prepare(request)

    @staticmethod
    def format_request(request: HttpRequest) -> str:
        """Return the method and path; the query string may hold a token."""
        return f"{request.method} {request.path}"


def _request_fields(request: HttpRequest, log_kwargs: dict[str, Any]) -> None:
    # Method and path as separate fields, replacing django-structlog's
    # "request" (whose default form carries the query string).
    log_kwargs.pop("request", None)
    log_kwargs["method"] = str(request.method)
    log_kwargs["path"] = request.path


def _finish_fields(
    request: HttpRequest, status: int, log_kwargs: dict[str, Any]
) -> None:
    started = getattr(request, "_av_started", None)
    route = _route(request)
    method = str(request.method)
    _request_fields(request, log_kwargs)
    log_kwargs["route"] = route
    if started is not None:
        elapsed = time.monotonic() - started
        log_kwargs["duration_ms"] = round(elapsed * 1000, 2)
        metrics.HTTP_REQUESTS.labels(
            route=route, method=method, status=f"{status // 100}xx"
        ).observe(elapsed)
    error = getattr(request, "auth_error", None)
    code = getattr(error, "code", None)
    if isinstance(code, str):
        log_kwargs["error_code"] = code


@receiver(structlog_signals.bind_extra_request_metadata, sender=RequestLogMiddleware)
def _started(
    sender: Any, request: HttpRequest, log_kwargs: dict[str, Any], **kwargs: Any
) -> None:
    # django-structlog adds the user agent: free text the client controls.
    log_kwargs.pop("user_agent", None)
    _request_fields(request, log_kwargs)


@receiver(
    structlog_signals.bind_extra_request_finished_metadata, sender=RequestLogMiddleware
)
def _finished(
    sender: Any,
    request: HttpRequest,
    response: HttpResponse,
    log_kwargs: dict[str, Any],
    **kwargs: Any,
) -> None:
    _finish_fields(request, response.status_code, log_kwargs)


@receiver(
    structlog_signals.bind_extra_request_failed_metadata, sender=RequestLogMiddleware
)
def _failed(
    sender: Any,
    request: HttpRequest,
    exception: BaseException,
    log_kwargs: dict[str, Any],
    **kwargs: Any,
) -> None:
    _finish_fields(request, 500, log_kwargs)


class LogIdentityMiddleware:
    """Bind the request's tenant, member and device ids to the log context."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        fields: dict[str, Any] = {}
        tenant_id = getattr(request, "tenant_id", None)
        if tenant_id is not None:
            fields["tenant_id"] = tenant_id
        principal = getattr(request, "principal", None)
        if principal is not None:
            fields["member_id"] = principal.member_id
            if principal.device_id is not None:
                fields["device_id"] = principal.device_id
        if fields:
            bind_log_context(**fields)
        return self.get_response(request)
