"""Logs, metrics, probes and traces: what they show, and what they never show.

The canary tests push unique markers (a device token in the header and in
``?token=``, an invite-like secret and a ciphertext-like body) through
requests that fail in different ways, capture every log line as the
production formatter renders it, and assert no marker appears.

To extend the canary (WebSocket, enrollment), add a driver to
``CANARY_DRIVERS``: a function ``(markers, client) -> None`` that sends the
markers wherever they could leak. Each driver runs in both the log and the
span canary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from django.conf import settings
from django.test import Client
from django.urls import path
from prometheus_client import REGISTRY
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agentvault.observability import logging as avlogging
from agentvault.observability.tracing import scrub_attributes, strip_query

# --- A test-only URL configuration ----------------------------------------------


class CanarySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Fields that fail validation on the canary's values."""

    invite_token = serializers.CharField(max_length=8)
    ciphertext = serializers.ChoiceField(choices=["only-this"])


class ValidateView(APIView):
    """Validate the body and fail: a 400 whose errors quote the input."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Any) -> Response:
        serializer = CanarySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response({})


class ProtectedView(APIView):
    """The default authentication and permission: a bad token gets 401."""

    def post(self, request: Any) -> Response:
        return Response({})


class CrashView(APIView):
    """Fail with the secrets in locals and in the exception message."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Any) -> Response:
        header = request.headers.get("Authorization")
        query = request.GET.get("token")
        body = dict(request.data)
        raise RuntimeError(f"crashed with {header} {query} {body}")


urlpatterns = [
    path("api/v1/canary/validate", ValidateView.as_view()),
    path("api/v1/canary/protected", ProtectedView.as_view()),
    path("api/v1/canary/crash", CrashView.as_view()),
]
handler404 = "agentvault.errors.handler404"
handler500 = "agentvault.errors.handler500"


# --- Capture ---------------------------------------------------------------------


@dataclasses.dataclass
class Markers:
    """Unique strings standing for the secrets that must never be logged."""

    token: str
    query_token: str
    invite: str
    ciphertext: str
    extra: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def new(cls) -> Markers:
        """Return fresh markers; none matches a scrubbing pattern by itself."""
        tag = uuid.uuid4().hex[:12]
        return cls(
            token=f"CANARYTOKEN{tag}",
            query_token=f"CANARYQUERY{tag}",
            invite=f"av1.{uuid.uuid4()}.CANARYINVITE{tag}",
            ciphertext=f"CANARYCIPHER{tag}" + "A" * 40,
        )

    def secrets(self) -> list[str]:
        """Return every marker, and the distinctive part of each."""
        values = [self.token, self.query_token, self.invite, self.ciphertext]
        values += [self.invite.rsplit(".", 1)[1], *self.extra]
        return values


class LogCapture(logging.Handler):
    """Keep each record as the production formatter renders it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        config = settings.LOGGING["formatters"]["structured"]
        factory = config["()"]
        self.setFormatter(
            factory(
                processors=config["processors"],
                foreign_pre_chain=config["foreign_pre_chain"],
            )
        )
        self.lines: list[str] = []
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # What code passed in (before any scrubbing) and what is written.
        if not isinstance(record.msg, dict):
            self.messages.append(record.getMessage())
        self.lines.append(self.format(record))


@dataclasses.dataclass
class Canary:
    """Markers and the log output captured while they were driven."""

    markers: Markers
    capture: LogCapture

    def output(self) -> str:
        """Return everything captured, lines and raw messages."""
        return "\n".join(self.capture.lines + self.capture.messages)

    def assert_clean(self) -> None:
        """Fail when any marker appears in the captured output."""
        text = self.output()
        leaked = [marker for marker in self.markers.secrets() if marker in text]
        assert leaked == [], f"secrets in logs: {leaked}\n{text}"


@pytest.fixture
def canary(settings: Any) -> Iterator[Canary]:
    """Capture every record of the root logger at DEBUG for one test."""
    settings.ROOT_URLCONF = __name__
    root = logging.getLogger()
    handler = LogCapture()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield Canary(markers=Markers.new(), capture=handler)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _send(client: Client, url: str, markers: Markers) -> Any:
    body = {"invite_token": markers.invite, "ciphertext": markers.ciphertext}
    return client.post(
        f"{url}?token={markers.query_token}",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {markers.token}",
    )


def drive_validation_failure(markers: Markers, client: Client) -> None:
    """A body that fails validation, with a refused token alongside."""
    response = _send(client, "/api/v1/canary/validate", markers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def drive_auth_failure(markers: Markers, client: Client) -> None:
    """A refused bearer token on an endpoint that needs one."""
    response = _send(client, "/api/v1/canary/protected", markers)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


def drive_server_error(markers: Markers, client: Client) -> None:
    """A view that crashes with every marker in its locals and message."""
    response = _send(client, "/api/v1/canary/crash", markers)
    assert response.status_code == 500
    assert response.json()["code"] == "server_error"


def drive_websocket_refused_token(markers: Markers, client: Client) -> None:
    """Relay sockets with a refused token, in the header and in ``?token=``."""
    from asgiref.sync import async_to_sync
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from agentvault.routing import build_websocket_application
    from messaging.routing import websocket_urlpatterns

    # The production wrapping: spans when tracing is on, the abuse guard.
    application = build_websocket_application(URLRouter(websocket_urlpatterns))
    attempts = [
        ("/ws/v1/relay", [(b"authorization", f"Bearer {markers.token}".encode())]),
        (f"/ws/v1/relay?token={markers.query_token}", []),
    ]

    async def refused(url: str, headers: list[tuple[bytes, bytes]]) -> int | None:
        socket = WebsocketCommunicator(application, url, headers=headers)
        await socket.connect(timeout=10)
        closed = await socket.receive_output(timeout=10)
        await socket.disconnect()
        code: int | None = closed.get("code")
        return code

    for url, headers in attempts:
        assert async_to_sync(refused)(url, headers) == 4401


CanaryDriver = Callable[[Markers, Client], None]
CANARY_DRIVERS: list[CanaryDriver] = [
    drive_validation_failure,
    drive_auth_failure,
    drive_server_error,
    drive_websocket_refused_token,
]
# Drivers that make no HTTP request (no request_finished line, no Django span).
NON_HTTP_DRIVERS = {drive_websocket_refused_token}


# --- The canary ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("driver", CANARY_DRIVERS, ids=lambda d: d.__name__)
def test_no_secret_reaches_the_logs(driver: CanaryDriver, canary: Canary) -> None:
    client = Client(raise_request_exception=False, HTTP_HOST="localhost")

    driver(canary.markers, client)

    # The relay logs nothing yet on a refused socket; once it does, the
    # lines are checked here like every other.
    assert driver in NON_HTTP_DRIVERS or any(
        '"event": "request_finished"' in line or '"event": "request_failed"' in line
        for line in canary.capture.lines
    )
    canary.assert_clean()


@pytest.mark.django_db
def test_a_server_error_logs_type_and_frames_without_locals(canary: Canary) -> None:
    client = Client(raise_request_exception=False, HTTP_HOST="localhost")

    drive_server_error(canary.markers, client)

    failed = [
        json.loads(line)
        for line in canary.capture.lines
        if '"event": "request_failed"' in line
    ]
    assert len(failed) == 1
    line = failed[0]
    assert line["status"] == 500
    assert line["path"] == "/api/v1/canary/crash"
    assert line["exception"]["type"] == "builtins.RuntimeError"
    assert "message" not in line["exception"]
    assert line["exception"]["frames"][-1]["function"] == "post"
    assert set(line["exception"]["frames"][-1]) == {"file", "line", "function"}
    canary.assert_clean()


def test_the_canary_sees_a_marker_that_is_logged(canary: Canary) -> None:
    logging.getLogger("tests.canary").warning("oops %s", canary.markers.ciphertext)

    with pytest.raises(AssertionError, match="secrets in logs"):
        canary.assert_clean()


@pytest.mark.django_db
def test_every_request_line_carries_the_echoed_request_id(canary: Canary) -> None:
    client = Client(raise_request_exception=False, HTTP_HOST="localhost")

    response = _send(client, "/api/v1/canary/protected", canary.markers)

    request_id = response["X-Request-ID"]
    lines = [json.loads(line) for line in canary.capture.lines]
    request_lines = [
        line for line in lines if line["logger"].startswith("django_structlog")
    ]
    assert [line["event"] for line in request_lines] == [
        "request_started",
        "request_finished",
    ]
    assert {line["request_id"] for line in request_lines} == {request_id}
    finished = request_lines[-1]
    assert finished["status"] == 401
    assert finished["error_code"] == "invalid_token"
    assert finished["route"] == "api/v1/canary/protected"
    assert finished["method"] == "POST"
    assert isinstance(finished["duration_ms"], float)


@pytest.mark.django_db
def test_a_client_supplied_request_id_is_not_trusted(canary: Canary) -> None:
    client = Client(raise_request_exception=False, HTTP_HOST="localhost")

    response = client.get("/api/v1/canary/protected", HTTP_X_REQUEST_ID="forged-id-123")

    assert response["X-Request-ID"] != "forged-id-123"
    assert "forged-id-123" not in "\n".join(canary.capture.lines)


# --- The formatter on its own --------------------------------------------------


def _render(event_dict: dict[str, Any]) -> dict[str, Any]:
    rendered: Any = event_dict
    for processor in avlogging.formatter_processors():
        rendered = processor(None, "info", rendered)
    result: dict[str, Any] = json.loads(rendered)
    return result


def test_unknown_and_secret_fields_are_dropped() -> None:
    rendered = _render(
        {
            "_record": None,
            "_from_structlog": True,
            "event": "sent",
            "device_id": uuid.UUID(int=7),
            "token": "tok",
            "body": "plain",
            "request": object(),
            "count": 3,
        }
    )

    assert rendered == {
        "event": "sent",
        "device_id": str(uuid.UUID(int=7)),
        "count": 3,
    }


def test_string_values_are_scrubbed() -> None:
    jwt_like = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"

    assert avlogging.scrub(f"Authorization: Bearer {jwt_like}") == (
        "Authorization: Bearer [redacted]"
    )
    assert "eyJ" not in avlogging.scrub(f"got {jwt_like} back")
    assert avlogging.scrub("GET /ws/v1/relay?token=abc&x=1 done") == (
        "GET /ws/v1/relay?[query removed] done"
    )
    assert "s3cr3t" not in avlogging.scrub(f"invite av1.{uuid.uuid4()}.s3cr3t")
    assert avlogging.scrub("Is this a question?") == "Is this a question?"


def test_own_exception_messages_are_kept_foreign_ones_dropped() -> None:
    from agentvault.auth.tokens import TokenError

    try:
        raise TokenError("token_expired")
    except TokenError as exc:
        own = avlogging.describe_exception(exc)
    try:
        raise ValueError("row (token_hash)=(abc) exists")
    except ValueError as exc:
        foreign = avlogging.describe_exception(exc)

    assert own["message"] == "token_expired"
    assert own["error_code"] == "token_expired"
    assert "message" not in foreign


def test_an_allow_list_extension_that_looks_secret_is_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="look like secrets"):
        avlogging.build_logging(extra_fields=["session_key"])


def test_the_logging_config_has_no_mail_handler() -> None:
    handlers = settings.LOGGING["handlers"]

    assert [h["class"] for h in handlers.values()] == ["logging.StreamHandler"]
    assert settings.LOGGING["loggers"]["django.request"]["level"] == "CRITICAL"
    assert settings.LOGGING["loggers"]["django.db.backends"]["level"] == "WARNING"


def test_bind_log_context_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="Not allow-listed"):
        avlogging.bind_log_context(ciphertext="x")
    structlog.contextvars.clear_contextvars()


# --- Probes and metrics ---------------------------------------------------------


def test_healthz_answers_without_a_database() -> None:
    # No django_db mark: any query would fail the test.
    response = Client(HTTP_HOST="10.1.2.3").get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_the_database_as_the_app_role() -> None:
    response = Client(HTTP_HOST="10.1.2.3").get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}
    app_role: Any = settings.DATABASE_ROLES["app"]
    assert settings.DATABASES["default"]["USER"] == app_role["USER"]


@pytest.mark.django_db
def test_readyz_fails_when_redis_is_unreachable(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    settings.OBSERVABILITY = {**settings.OBSERVABILITY, "READY_TIMEOUT": 0.5}

    response = Client().get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "fail",
        "checks": {"database": "ok", "redis": "fail"},
    }


def test_metrics_are_exposed_to_allowed_networks() -> None:
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    for name in (
        "agentvault_websocket_connections_open",
        "agentvault_envelopes_stored_total",
        "agentvault_envelopes_pushed_total",
        "agentvault_delivery_latency_seconds",
        "agentvault_recipient_queue_depth",
        "agentvault_acks_total",
        "agentvault_auth_failures_total",
        "agentvault_enrollment_attempts_total",
        "agentvault_rate_limited_total",
        "agentvault_revocations_total",
    ):
        assert f"# TYPE {name} " in text, name


def test_metrics_are_hidden_from_other_networks(settings: Any) -> None:
    assert Client().get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 404

    settings.OBSERVABILITY = {**settings.OBSERVABILITY, "METRICS_TOKEN": "scrape-me"}
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404
    allowed = Client().get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer scrape-me"
    )
    assert allowed.status_code == 200


@pytest.mark.django_db
def test_a_refused_token_is_counted(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    labels = {"transport": "http", "reason": "invalid_token"}
    before = REGISTRY.get_sample_value("agentvault_auth_failures_total", labels) or 0

    response = Client().post(
        "/api/v1/canary/protected", HTTP_AUTHORIZATION="Bearer not-a-token"
    )

    assert response.status_code == 401
    after = REGISTRY.get_sample_value("agentvault_auth_failures_total", labels)
    assert after == before + 1


def test_metrics_add_up_across_worker_processes(tmp_path: Any) -> None:
    script = (
        "from agentvault.observability import metrics\n"
        "metrics.ENVELOPES_STORED.inc(3)\n"
        "metrics.WEBSOCKET_CONNECTIONS_OPEN.inc()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
    reader = (
        "from prometheus_client import generate_latest\n"
        "from agentvault.observability import metrics\n"
        "print(generate_latest(metrics.registry()).decode())\n"
    )

    output = subprocess.run(
        [sys.executable, "-c", reader],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    assert "agentvault_envelopes_stored_total 6.0" in output
    # A worker that exited took its open connections out of the live sum.
    assert "agentvault_websocket_connections_open 2.0" not in output


# --- Traces -------------------------------------------------------------------


def test_span_attributes_lose_queries_and_headers() -> None:
    scrubbed = scrub_attributes(
        {
            "http.url": "https://h/ws/v1/relay?token=abc",
            "url.query": "token=abc",
            "http.request.header.authorization": ("Bearer abc",),
            "http.user_agent": "curl",
            "exception.message": "abc",
            "exception.type": "builtins.ValueError",
            "http.status_code": 401,
        }
    )

    assert scrubbed == {
        "http.url": "https://h/ws/v1/relay",
        "exception.type": "builtins.ValueError",
        "http.status_code": 401,
    }
    assert strip_query("GET /relay?token=x") == "GET /relay"


@pytest.fixture
def span_exporter() -> Iterator[Any]:
    """Turn tracing on with an in-memory exporter for one test."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from agentvault.observability import tracing

    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing(exporter=exporter, force=True)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def _span_text(span: Any) -> str:
    parts = [span.name, repr(dict(span.attributes or {}))]
    parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    return "\n".join(parts)


@pytest.mark.django_db
@pytest.mark.parametrize("driver", CANARY_DRIVERS, ids=lambda d: d.__name__)
def test_no_secret_reaches_the_spans(
    driver: CanaryDriver, canary: Canary, span_exporter: Any
) -> None:
    client = Client(raise_request_exception=False, HTTP_HOST="localhost")

    driver(canary.markers, client)

    finished = span_exporter.get_finished_spans()
    if driver is drive_websocket_refused_token:
        # One server span per socket (plus receive/send children), no query.
        sockets = [span for span in finished if "http.target" in span.attributes]
        assert [span.name for span in sockets] == ["HTTP /ws/v1/relay"] * 2
        assert {span.attributes["http.url"] for span in sockets} == {"/ws/v1/relay"}
    if driver not in NON_HTTP_DRIVERS:
        server = [span for span in finished if span.name.startswith("POST")]
        assert len(server) == 1
        assert server[0].attributes["http.target"].startswith("/api/v1/canary/")
    text = "\n".join(_span_text(span) for span in finished)
    leaked = [marker for marker in canary.markers.secrets() if marker in text]
    assert leaked == [], text
    canary.assert_clean()


def test_tracing_stays_off_without_the_environment() -> None:
    from agentvault.observability.tracing import tracing_requested

    assert tracing_requested({}) is False
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "none"}) is False
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is True
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"}) is True


# --- Metrics move with the relay's work -------------------------------------------


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels or None)
    return value or 0.0


@pytest.mark.django_db
def test_metrics_move_on_send_ack_auth_failure_and_revocation(
    tenant_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.test import Client
    from rest_framework.test import APIClient

    from messaging.tests.helpers import make_room
    from tests.support import device_token

    w = tenant_a
    room = make_room(w.owner, w.agent)
    api = APIClient()
    before = {
        "stored": _sample("agentvault_messages_stored_total", transport="rest"),
        "envelopes": _sample("agentvault_envelopes_stored_total"),
        "pushed": _sample("agentvault_envelopes_pushed_total", transport="rest"),
        "acks": _sample("agentvault_acks_total", transport="rest"),
        "acked": _sample("agentvault_envelopes_acked_total"),
        "revoked": _sample("agentvault_revocations_total", source="api"),
    }
    failures_before = sum(
        _sample("agentvault_auth_failures_total", transport="http", reason=reason)
        for reason in ("invalid_token", "token_expired", "device_revoked")
    )

    # A send over REST: one message, one envelope for the agent's device.
    # Committed-work counters move on commit, which a test transaction defers.
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {device_token(w.owner_device.device)}")
    with django_capture_on_commit_callbacks(execute=True):
        sent = api.post(
            f"/api/v1/rooms/{room.pk}/messages",
            {
                "client_message_id": "m-1",
                "envelopes": [
                    {"device_id": str(w.agent_device.device.pk), "ciphertext": "AAAA"}
                ],
            },
            format="json",
        )
    assert sent.status_code == 201, sent.json()

    # The agent fetches and acknowledges it.
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {device_token(w.agent_device.device)}")
    inbox = api.get("/api/v1/devices/me/inbox").json()["envelopes"]
    assert len(inbox) == 1
    ack = api.post(
        "/api/v1/devices/me/inbox/ack", {"up_to_seq": inbox[0]["seq"]}, format="json"
    )
    assert ack.status_code == 200

    # A refused token, then an admin revokes the member's device.
    Client().get("/api/v1/rooms", HTTP_AUTHORIZATION="Bearer not-a-token")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {device_token(w.admin_device.device)}")
    with django_capture_on_commit_callbacks(execute=True):
        revoked = api.post(f"/api/v1/devices/{w.member_device.device.pk}/revoke")
    assert revoked.status_code == 200

    after_failures = sum(
        _sample("agentvault_auth_failures_total", transport="http", reason=reason)
        for reason in ("invalid_token", "token_expired", "device_revoked")
    )
    assert _sample("agentvault_messages_stored_total", transport="rest") == (
        before["stored"] + 1
    )
    assert _sample("agentvault_envelopes_stored_total") == before["envelopes"] + 1
    assert _sample("agentvault_envelopes_pushed_total", transport="rest") == (
        before["pushed"] + 1
    )
    assert _sample("agentvault_acks_total", transport="rest") == before["acks"] + 1
    assert _sample("agentvault_envelopes_acked_total") == before["acked"] + 1
    assert after_failures == failures_before + 1
    assert _sample("agentvault_revocations_total", source="api") == (
        before["revoked"] + 1
    )
