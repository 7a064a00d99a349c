"""Abuse escalation: failure spikes per address and device, alerts, throttle."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.core.cache import cache
from django.test import Client
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from agentvault import abuse
from agentvault.routing import build_websocket_application
from audit.models import AuditEvent
from enrollment.actions import do_revoke_device
from messaging.routing import websocket_urlpatterns
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db

ATTACKER = "203.0.113.50"
SPIKE = abuse.SPIKE_ACTION


@pytest.fixture(autouse=True)
def _tight_limits(settings: Any) -> Iterator[None]:
    """Low thresholds, roomy enrollment limits, empty counters."""
    settings.ABUSE = {
        "IP_FAILURE_RATE": "3/10m",
        "DEVICE_FAILURE_RATE": "2/10m",
        "BLOCK_SECONDS": 600,
    }
    settings.ENROLLMENT = {**settings.ENROLLMENT, "AUTH_RATE": "1000/m"}
    cache.clear()
    yield
    cache.clear()


def _spikes(kind: str) -> float:
    labels = {"kind": kind}
    value = REGISTRY.get_sample_value("agentvault_auth_failure_spikes_total", labels)
    return value or 0.0


def _alerts(world: TenantWorld) -> list[AuditEvent]:
    with tenant_scope(world.tenant.pk):
        return list(AuditEvent.objects.filter(action=SPIKE).order_by("id"))


def _bad_token(api: APIClient, ip: str = ATTACKER, **extra: Any) -> Any:
    return api.get(
        "/api/v1/devices/me",
        HTTP_AUTHORIZATION="Bearer forged.token.value",
        REMOTE_ADDR=ip,
        **extra,
    )


def _bad_answer(api: APIClient, device_id: Any, ip: str = ATTACKER) -> Any:
    body = {
        "device_id": str(device_id),
        "challenge": base64.b64encode(b"c" * 32).decode(),
        "signature": base64.b64encode(b"s" * 64).decode(),
    }
    return api.post("/api/v1/auth/token", body, format="json", REMOTE_ADDR=ip)


def test_an_address_is_throttled_at_the_threshold(api: APIClient) -> None:
    before = _spikes("ip")

    answers = [_bad_token(api).status_code for _ in range(3)]
    assert _spikes("ip") == before + 1

    throttled = _bad_token(api)
    assert answers == [401, 401, 401]
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "rate_limited"
    assert 590 <= int(throttled["Retry-After"]) <= 600
    # Another address is not affected; the blocked one stays blocked.
    assert _bad_token(api, ip="198.51.100.1").status_code == 401
    assert _bad_token(api).status_code == 429
    assert _spikes("ip") == before + 1


def test_the_throttle_refuses_before_any_token_work(
    api: APIClient, tenant_a: TenantWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        _bad_token(api)

    def fail(token: str) -> None:
        raise AssertionError("token verified while blocked")

    monkeypatch.setattr("tenants.middleware.verify_token", fail)
    valid = f"Bearer {tenant_a.member_device.token}"
    response = api.get(
        "/api/v1/devices/me", HTTP_AUTHORIZATION=valid, REMOTE_ADDR=ATTACKER
    )

    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"


def test_a_forged_forwarded_for_does_not_escape_the_throttle(
    api: APIClient, settings: Any
) -> None:
    for i in range(3):
        _bad_token(api, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")

    assert _bad_token(api, HTTP_X_FORWARDED_FOR="192.0.2.99").status_code == 429

    # Behind a trusted proxy, the address the proxy appended is the client's.
    settings.AGENTVAULT = {**settings.AGENTVAULT, "TRUSTED_PROXIES": ["10.0.0.0/8"]}
    forged = f"192.0.2.77, {ATTACKER}"
    response = _bad_token(api, ip="10.0.0.2", HTTP_X_FORWARDED_FOR=forged)
    assert response.status_code == 429


def test_a_spike_of_forged_tokens_alerts_no_tenant(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    for _ in range(4):
        _bad_token(api)

    assert _alerts(tenant_a) == []
    assert _alerts(tenant_b) == []


def test_a_spike_of_verified_tokens_alerts_their_tenant_once(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    identity = tenant_a.member_device
    token = identity.token
    with tenant_scope(tenant_a.tenant.pk):
        do_revoke_device(identity.device, acting=tenant_a.admin)
    before = _spikes("device")

    answers = [
        api.get(
            "/api/v1/devices/me",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            REMOTE_ADDR=ATTACKER,
        ).status_code
        for _ in range(5)
    ]

    assert answers == [401, 401, 401, 429, 429]
    alerts = _alerts(tenant_a)
    # The device reached its threshold (2) first, then the address (3).
    assert [(a.target_kind, a.details["key"]) for a in alerts] == [
        ("device", "device"),
        ("ip", "ip"),
    ]
    assert alerts[0].target_id == str(identity.device.pk)
    assert alerts[1].target_id == ATTACKER
    assert alerts[1].client_ip == ATTACKER
    assert alerts[0].details["reason"] == "device_revoked"
    assert _spikes("device") == before + 1
    assert _alerts(tenant_b) == []


def test_failed_challenge_answers_block_the_device_and_alert_once(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    device_id = tenant_a.agent_device.device.pk
    ips = [f"198.51.100.{i}" for i in range(6)]

    answers = [_bad_answer(api, device_id, ip=ip) for ip in ips]

    # Each address failed once; the device reached its threshold (2).
    codes = [answer.status_code for answer in answers]
    assert codes == [401, 401, 429, 429, 429, 429]
    assert answers[2].json()["code"] == "rate_limited"
    assert int(answers[2]["Retry-After"]) > 0
    challenge = api.post(
        "/api/v1/auth/challenge",
        {"device_id": str(device_id)},
        format="json",
        REMOTE_ADDR="198.51.100.200",
    )
    assert challenge.status_code == 429
    alerts = _alerts(tenant_a)
    assert len(alerts) == 1
    assert alerts[0].target_id == str(device_id)
    assert alerts[0].details == {
        "key": "device",
        "failures": 2,
        "block_seconds": 600,
        "transport": "challenge",
        "reason": "bad_signature",
    }
    assert _alerts(tenant_b) == []
    # Other devices of the tenant still get challenges.
    other = tenant_a.member_device.device.pk
    response = api.post(
        "/api/v1/auth/challenge", {"device_id": str(other)}, format="json"
    )
    assert response.status_code == 200


def test_unknown_devices_are_not_counted(api: APIClient) -> None:
    unknown = uuid.uuid4()

    codes = [
        _bad_answer(api, unknown, ip=f"198.51.100.{i}").status_code for i in (1, 2, 3)
    ]

    assert codes == [401, 401, 401]


def test_an_address_spike_at_the_token_endpoint_alerts_the_device_tenant(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld, settings: Any
) -> None:
    settings.ABUSE = {**settings.ABUSE, "DEVICE_FAILURE_RATE": "100/10m"}
    device_id = tenant_b.owner_device.device.pk

    codes = [_bad_answer(api, device_id).status_code for _ in range(4)]

    assert codes == [401, 401, 401, 429]
    alerts = _alerts(tenant_b)
    assert [(a.target_kind, a.target_id) for a in alerts] == [("ip", ATTACKER)]
    assert _alerts(tenant_a) == []


def test_the_console_shows_alerts_to_their_tenant_only(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    for ip in ("198.51.100.1", "198.51.100.2"):
        _bad_answer(api, tenant_a.agent_device.device.pk, ip=ip)
    with tenant_scope(tenant_b.tenant.pk):
        import audit

        audit.record("device.approved", actor="system", target=("device", "x"))

    console_a, console_b = Client(), Client()
    console_a.force_login(tenant_a.console_user)
    console_b.force_login(tenant_b.console_user)
    page_a = console_a.get("/admin/audit/securityalert/")
    page_b = console_b.get("/admin/audit/securityalert/")

    assert page_a.status_code == page_b.status_code == 200
    assert str(tenant_a.agent_device.device.pk) in page_a.content.decode()
    assert SPIKE in page_a.content.decode()
    assert SPIKE not in page_b.content.decode()
    assert "device.approved" not in page_b.content.decode()
    alert = _alerts(tenant_a)[0]
    foreign = console_b.get(f"/admin/audit/securityalert/{alert.pk}/change/")
    assert foreign.status_code == 302


# --- WebSocket ------------------------------------------------------------------


def _socket(url: str, ip: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    application = build_websocket_application(URLRouter(websocket_urlpatterns))

    async def attempt() -> int:
        socket = WebsocketCommunicator(application, url, headers=headers)
        socket.scope["client"] = (ip, 40000)
        connected, _ = await socket.connect(timeout=10)
        assert connected
        closed = await socket.receive_output(timeout=10)
        await socket.disconnect()
        return int(closed["code"])

    return int(async_to_sync(attempt)())


def test_refused_sockets_count_and_a_blocked_address_gets_4429() -> None:
    before = _spikes("ip")

    codes = [_socket("/ws/v1/relay?token=forged", ATTACKER) for _ in range(3)]
    blocked = _socket("/ws/v1/relay?token=forged", ATTACKER)
    other = _socket("/ws/v1/relay?token=forged", "198.51.100.9")

    assert codes == [4401, 4401, 4401]
    assert blocked == 4429
    assert other == 4401
    assert _spikes("ip") == before + 1


def test_sockets_without_a_token_are_not_counted() -> None:
    codes = [_socket("/ws/v1/relay", ATTACKER) for _ in range(4)]

    assert codes == [4401] * 4


def test_the_consumer_hook_counts_a_socket_once() -> None:
    scope: dict[str, Any] = {"type": "websocket", "client": (ATTACKER, 1)}
    calls = [
        abuse.note_websocket_auth_failure(scope, reason="invalid_token")
        for _ in range(3)
    ]
    assert calls == [[], [], []]
    assert abuse.get_block_seconds(ip=ATTACKER) is None


def test_an_unreachable_cache_neither_blocks_nor_fails(
    api: APIClient, tenant_a: TenantWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get_many", down)
    monkeypatch.setattr(cache, "add", down)
    valid = f"Bearer {tenant_a.member_device.token}"

    codes = [_bad_token(api).status_code for _ in range(4)]
    served = api.get(
        "/api/v1/devices/me", HTTP_AUTHORIZATION=valid, REMOTE_ADDR=ATTACKER
    )

    assert codes == [401] * 4
    assert served.status_code == 200
