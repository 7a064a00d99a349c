"""Optional OpenTelemetry traces, with query strings and headers stripped.

Off unless the standard variables ask for it: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER`` (``otlp``
or ``console``; ``none`` keeps it off). The OpenTelemetry packages are
imported only then, so the server runs without them.

What leaves the process is scrubbed twice:

- request hooks rewrite URL attributes without their query string as soon
  as a span starts (``?token=`` is how browsers authenticate sockets);
- every span goes through ``ScrubbingSpanExporter`` on its way out, which
  drops query and header attributes, SQL parameters and user agents, strips
  query strings from any URL-like value and span name, and keeps of an
  exception event its type only (messages and stack texts quote data).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from agentvault.observability.logging import OWN_PACKAGES

logger = logging.getLogger(__name__)

PROBE_PATHS = "healthz,readyz,metrics"

# Attribute keys dropped outright, by exact name or prefix.
_DROP_EXACT = frozenset(
    {
        "url.query",
        "http.user_agent",
        "user_agent.original",
        "db.statement.parameters",
        "enduser.id",
        "exception.message",
        "exception.stacktrace",
    }
)
_DROP_PREFIXES = (
    "http.request.header.",
    "http.response.header.",
    "db.query.parameter.",
    "enduser.",
    "rpc.request.metadata.",
    "rpc.response.metadata.",
)
_QUERY = re.compile(r"\?[^\s#]*")

_state: dict[str, Any] = {"provider": None, "instrumentors": []}


def tracing_requested(environ: dict[str, str] | None = None) -> bool:
    """Return whether the environment asks for traces."""
    env = os.environ if environ is None else environ
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def strip_query(value: str) -> str:
    """Return ``value`` without any query string."""
    return _QUERY.sub("", value)


def scrub_attributes(attributes: Any, *, own_exception: bool = False) -> dict[str, Any]:
    """Return span or event attributes with risky keys dropped, URLs cut."""
    kept: dict[str, Any] = {}
    for key, value in dict(attributes or {}).items():
        if key in _DROP_EXACT and not (key == "exception.message" and own_exception):
            continue
        if key.startswith(_DROP_PREFIXES):
            continue
        if isinstance(value, str) and "?" in value:
            value = strip_query(value)
        kept[key] = value
    return kept


def _own_exception(attributes: Any) -> bool:
    kind = str(dict(attributes or {}).get("exception.type", ""))
    return kind.split(".", 1)[0] in OWN_PACKAGES


def scrub_span(span: Any) -> Any:
    """Return a copy of a finished span with the scrubbing applied."""
    from opentelemetry.sdk.trace import Event, ReadableSpan

    events = [
        Event(
            event.name,
            scrub_attributes(
                event.attributes, own_exception=_own_exception(event.attributes)
            ),
            event.timestamp,
        )
        for event in span.events
    ]
    return ReadableSpan(
        name=strip_query(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub_attributes(span.attributes),
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def scrubbing_exporter(inner: Any) -> Any:
    """Wrap a ``SpanExporter`` so that only scrubbed spans reach it."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class ScrubbingSpanExporter(SpanExporter):
        """Scrub each span, then hand it to the wrapped exporter."""

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            result: SpanExportResult = inner.export([scrub_span(s) for s in spans])
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(inner.force_flush(timeout_millis))

    return ScrubbingSpanExporter()


def _set_url_attributes(span: Any, url: str, target: str) -> None:
    if not span.is_recording():
        return
    span.set_attribute("http.url", strip_query(url))
    span.set_attribute("url.full", strip_query(url))
    span.set_attribute("http.target", target)
    span.set_attribute("url.query", "")
    from agentvault import context

    request_id = context.correlation_id.get()
    if request_id:
        span.set_attribute("agentvault.request_id", request_id)


def django_request_hook(span: Any, request: Any) -> None:
    """Rewrite a Django span's URL attributes without the query string."""
    _set_url_attributes(span, request.build_absolute_uri(request.path), request.path)


def django_response_hook(span: Any, request: Any, response: Any) -> None:
    """Repeat the rewrite at the end, after the middleware set its own."""
    _set_url_attributes(span, request.build_absolute_uri(request.path), request.path)


def asgi_request_hook(span: Any, scope: dict[str, Any]) -> None:
    """Rewrite an ASGI (WebSocket) span's URL attributes without the query."""
    path = str(scope.get("path", ""))
    _set_url_attributes(span, path, path)


def _exporter_from_env() -> Any:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(*, exporter: Any = None, force: bool = False) -> bool:
    """Set up the tracer provider and the instrumentations; return whether on.

    ``exporter`` replaces the one the environment names (tests pass an
    in-memory exporter together with ``force``). Missing packages leave
    tracing off with one warning, never stop the server.
    """
    if _state["provider"] is not None:
        return True
    if not force and not tracing_requested():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        logger.warning(
            "Traces requested but OpenTelemetry is not installed",
            extra={"error_code": type(exc).__name__},
        )
        return False

    service = os.environ.get("OTEL_SERVICE_NAME", "agentvault")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    wrapped = scrubbing_exporter(exporter or _exporter_from_env())
    processor = SimpleSpanProcessor if exporter is not None else BatchSpanProcessor
    provider.add_span_processor(processor(wrapped))
    if exporter is None:
        trace.set_tracer_provider(provider)

    instrumentors: list[Any] = []
    django = DjangoInstrumentor()
    django.instrument(
        tracer_provider=provider,
        request_hook=django_request_hook,
        response_hook=django_response_hook,
        excluded_urls=PROBE_PATHS,
        is_sql_commentor_enabled=False,
    )
    instrumentors.append(django)
    psycopg = PsycopgInstrumentor()
    psycopg.instrument(
        tracer_provider=provider,
        enable_commenter=False,
        capture_parameters=False,
        skip_dep_check=True,
    )
    instrumentors.append(psycopg)
    redis = RedisInstrumentor()
    redis.instrument(tracer_provider=provider)
    instrumentors.append(redis)

    _state.update(provider=provider, instrumentors=instrumentors)
    logger.info("OpenTelemetry traces on", extra={"result": service})
    return True


def shutdown_tracing() -> None:
    """Undo ``configure_tracing`` (tests) and flush what is pending."""
    for instrumentor in _state["instrumentors"]:
        instrumentor.uninstrument()
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()
    _state.update(provider=None, instrumentors=[])


def current_trace_id() -> str | None:
    """Return the hex id of the current trace, when tracing is on."""
    if _state["provider"] is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def trace_websocket(app: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the WebSocket ASGI app in OpenTelemetry's middleware when on.

    HTTP is traced by the Django instrumentation; this adds the sockets. The
    middleware records the URL with its query string, which the hook and
    the exporter both remove.
    """
    provider = _state["provider"]
    if provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        app,
        tracer_provider=provider,
        server_request_hook=asgi_request_hook,
        excluded_urls=PROBE_PATHS,
    )
