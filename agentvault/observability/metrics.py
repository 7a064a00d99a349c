"""Prometheus metrics of the relay, defined once for every app to increment.

Import the object and increment it where the event happens, after the
transaction that makes it true has committed (``transaction.on_commit``)
where there is one::

    from agentvault.observability import metrics

    metrics.ENVELOPES_STORED.inc(len(envelopes))
    metrics.ENROLLMENT_ATTEMPTS.labels(result="invalid_invite").inc()

Labels take small, fixed sets of values (results, reasons, transports),
never ids: one time series per device or tenant would swamp Prometheus.

Several worker processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty,
writable directory (wiped before the workers start) in every worker's
environment; ``prometheus_client`` then keeps values in files there and
``/metrics`` sums them over the processes (see ``registry()``).
"""

from __future__ import annotations

import atexit
import os
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

PREFIX = "agentvault"

# One series per metric, not a "_created" twin of each counter.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Delivery latency: from the commit of the envelope to the push on a socket.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
_DEPTH_BUCKETS = (0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- WebSocket relay (messaging consumer) -------------------------------------

WEBSOCKET_CONNECTIONS_OPEN = Gauge(
    f"{PREFIX}_websocket_connections_open",
    "Authenticated WebSocket connections currently open on the relay.",
    multiprocess_mode="livesum",
)
"""``inc()`` after ``accept()``, ``dec()`` in ``disconnect()`` (once only)."""

WEBSOCKET_CONNECTIONS = Counter(
    f"{PREFIX}_websocket_connections",
    "WebSocket connection attempts by result.",
    ["result"],
)
"""``result``: ``accepted``, ``unauthenticated``, ``revoked``, ``replaced``."""

WEBSOCKET_CLOSES = Counter(
    f"{PREFIX}_websocket_closes",
    "WebSocket connections closed by the server, by application close code.",
    ["code"],
)
"""``code``: the close code as a string, e.g. ``"4403"``, ``"4408"``."""

# --- Messages and delivery (messaging actions and consumer) ----------------------

MESSAGES_STORED = Counter(
    f"{PREFIX}_messages_stored",
    "Messages committed to the store.",
    ["transport"],
)
"""``transport``: ``rest`` or ``websocket``; once per new message."""

ENVELOPES_STORED = Counter(
    f"{PREFIX}_envelopes_stored",
    "Envelopes (one per recipient device) committed to delivery queues.",
)
"""``inc(n)`` on commit of a send, ``n`` = number of deliveries written."""

ENVELOPES_PUSHED = Counter(
    f"{PREFIX}_envelopes_pushed",
    "Envelopes sent to a recipient: pushed on a socket or fetched over REST.",
    ["transport"],
)
"""``transport``: ``websocket`` (push, backlog included) or ``rest`` (inbox)."""

DELIVERY_LATENCY = Histogram(
    f"{PREFIX}_delivery_latency_seconds",
    "Time from the commit of an envelope to its push on the recipient's socket.",
    buckets=_LATENCY_BUCKETS,
)
"""Observe live pushes only (``observe_since(DELIVERY_LATENCY, committed)``),
not backlog replays, whose age is the recipient's absence."""

QUEUE_DEPTH = Histogram(
    f"{PREFIX}_recipient_queue_depth",
    "Undelivered envelopes in a recipient's queue, observed on each enqueue.",
    buckets=_DEPTH_BUCKETS,
)
"""Observe the queue's depth after the insert, once per recipient."""

QUEUE_FULL = Counter(
    f"{PREFIX}_recipient_queue_full",
    "Sends refused because a recipient queue was over its cap (507).",
)

ACKS = Counter(
    f"{PREFIX}_acks",
    "Acknowledgements received.",
    ["transport"],
)
"""``transport``: ``rest`` or ``websocket``; once per ack call or frame."""

ENVELOPES_ACKED = Counter(
    f"{PREFIX}_envelopes_acked",
    "Envelopes deleted from queues because their recipient acknowledged them.",
)

# --- Authentication, enrollment, abuse ---------------------------------------------

AUTH_FAILURES = Counter(
    f"{PREFIX}_auth_failures",
    "Refused credentials, by transport and reason.",
    ["transport", "reason"],
)
"""``transport``: ``http``, ``websocket`` or ``challenge``; ``reason``: the
``TokenError`` code (``invalid_token``, ``token_expired``, ``device_revoked``,
``unknown_subject``) or ``bad_signature``. Wired in
``tenants.middleware`` (HTTP); the consumer increments ``websocket``."""

AUTH_FAILURE_SPIKES = Counter(
    f"{PREFIX}_auth_failure_spikes",
    "Authentication-failure spikes that raised an audit event, by key kind.",
    ["kind"],
)
"""``kind``: ``ip`` or ``device``."""

TOKENS_ISSUED = Counter(
    f"{PREFIX}_tokens_issued",
    "Access tokens issued by the built-in issuer.",
)

ENROLLMENT_ATTEMPTS = Counter(
    f"{PREFIX}_enrollment_attempts",
    "Enrollment attempts by result.",
    ["result"],
)
"""``result``: ``created``, ``invalid_invite``, ``bad_proof``,
``invalid_request``, ``rate_limited``."""

DEVICE_APPROVALS = Counter(
    f"{PREFIX}_device_approvals",
    "Devices approved.",
    ["source"],
)
"""``source``: ``api``, ``admin`` or ``command``."""

RATE_LIMITED = Counter(
    f"{PREFIX}_rate_limited",
    "Requests or frames refused by a rate limit, by limit.",
    ["limit"],
)
"""``limit``: ``enrollment``, ``send``, ``prekey_bundle``, ``auth_failures``..."""

REVOCATIONS = Counter(
    f"{PREFIX}_revocations",
    "Devices revoked, by who asked.",
    ["source"],
)
"""``source``: ``api``, ``self``, ``admin`` or ``command``."""

# --- HTTP (wired by the request log middleware) ------------------------------------

HTTP_REQUESTS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request duration by route pattern, method and status class.",
    ["route", "method", "status"],
    buckets=_REQUEST_BUCKETS,
)
"""``route`` is the URL pattern (``api/v1/rooms/<uuid:room_id>/messages``),
never the raw path; ``status`` is ``2xx``, ``4xx``..."""


def observe_since(histogram: Histogram, started: float) -> None:
    """Observe the seconds elapsed since the wall-clock time ``started``.

    Wall-clock (``time.time()``) on purpose: the start may have been taken
    by another worker (the commit) and carried in a channel-layer event.
    """
    histogram.observe(max(0.0, time.time() - started))


def multiprocess_dir() -> str | None:
    """Return the multi-process directory, when several workers share one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry() -> CollectorRegistry:
    """Return the registry ``/metrics`` renders.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, a fresh registry reading every
    worker's files (the per-process default registry would show only the
    worker that happened to answer the scrape).
    """
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        collected, path=directory
    )
    return collected


def mark_process_dead(pid: int | None = None) -> None:
    """Drop the live gauges of a finished worker (multi-process mode only)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            pid or os.getpid()
        )


if multiprocess_dir() is not None:
    # A worker that exits cleanly takes its live gauges with it.
    atexit.register(mark_process_dead)
