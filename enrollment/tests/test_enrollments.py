"""POST /api/v1/enrollments: redeem an invite for a pending device."""

from __future__ import annotations

import base64
import datetime
import hmac
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from enrollment import crypto
from enrollment.models import Device, Invite
from enrollment.tests.helpers import (
    as_admin,
    audit_actions,
    b64,
    create_invite,
    enroll,
    proof,
)
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _state(world: TenantWorld) -> tuple[int, int, list[Any]]:
    with tenant_scope(world.tenant.pk):
        return (
            Device.objects.count(),
            Member.objects.count(),
            list(Invite.objects.values_list("id", "used_at", "device_id")),
        )


def _refused(response: Any, code: str, status: int = 400) -> None:
    assert response.status_code == status, response.json()
    assert response.json()["code"] == code


def test_a_device_enrolls_pending_with_its_fingerprint(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    invite = create_invite(api, tenant_a, name="Scout", kind="agent")
    key = SigningKey.generate()

    response = enroll(api, invite["token"], key, name="scout-box")

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "pending"
    assert body["tenant_id"] == str(tenant_a.tenant.pk)
    assert body["fingerprint"] == crypto.fingerprint(bytes(key.verify_key))
    with tenant_scope(tenant_a.tenant.pk):
        device = Device.objects.select_related("member").get(pk=body["device_id"])
        used = Invite.objects.get(pk=invite["id"])
    assert (device.status, device.name) == ("pending", "scout-box")
    assert bytes(device.identity_key) == bytes(key.verify_key)
    assert str(device.member_id) == body["member_id"]
    assert (device.member.name, device.member.kind, device.member.role) == (
        "Scout",
        "agent",
        "agent",
    )
    assert used.used_at is not None and used.device_id == device.pk
    assert audit_actions(tenant_a)[-1] == "device.enrolled"


def test_an_invite_for_an_existing_member_adds_a_device_to_it(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    invite = create_invite(api, tenant_a, member_id=str(tenant_a.member.pk))
    members_before = _state(tenant_a)[1]

    response = enroll(api, invite["token"])

    assert response.status_code == 201
    assert response.json()["member_id"] == str(tenant_a.member.pk)
    assert _state(tenant_a)[1] == members_before


def test_the_hash_is_compared_in_constant_time(
    api: APIClient, tenant_a: TenantWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    invite = create_invite(api, tenant_a)
    calls: list[tuple[bytes, bytes]] = []

    def refusing_compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return False

    monkeypatch.setattr(hmac, "compare_digest", refusing_compare)
    before = _state(tenant_a)
    response = enroll(api, invite["token"])

    _refused(response, "invalid_invite")
    assert len(calls) == 1 and len(calls[0][0]) == 64
    assert _state(tenant_a) == before


def test_a_used_invite_is_refused(api: APIClient, tenant_a: TenantWorld) -> None:
    invite = create_invite(api, tenant_a)
    assert enroll(api, invite["token"]).status_code == 201
    before = _state(tenant_a)

    _refused(enroll(api, invite["token"]), "invalid_invite")
    assert _state(tenant_a) == before
    assert audit_actions(tenant_a)[-1] == "enrollment.refused"


def test_an_expired_invite_is_refused(api: APIClient, tenant_a: TenantWorld) -> None:
    invite = create_invite(api, tenant_a)
    with tenant_scope(tenant_a.tenant.pk):
        Invite.objects.filter(pk=invite["id"]).update(
            expires_at=datetime.datetime.now(datetime.UTC)
            - datetime.timedelta(seconds=1)
        )
    before = _state(tenant_a)

    _refused(enroll(api, invite["token"]), "invalid_invite")
    assert _state(tenant_a) == before


def test_a_revoked_invite_is_refused(api: APIClient, tenant_a: TenantWorld) -> None:
    invite = create_invite(api, tenant_a)
    as_admin(api, tenant_a)
    assert api.post(f"/api/v1/invites/{invite['id']}/revoke").status_code == 200
    before = _state(tenant_a)

    _refused(enroll(api, invite["token"]), "invalid_invite")
    assert _state(tenant_a) == before


def test_an_invite_moved_to_another_tenant_is_refused(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    invite = create_invite(api, tenant_a)
    secret = invite["token"].split(".")[2]
    forged = f"av1.{tenant_b.tenant.pk}.{secret}"
    before_a, before_b = _state(tenant_a), _state(tenant_b)

    _refused(enroll(api, forged), "invalid_invite")
    assert (_state(tenant_a), _state(tenant_b)) == (before_a, before_b)
    # The genuine token still works afterwards.
    assert enroll(api, invite["token"]).status_code == 201


@pytest.mark.parametrize(
    "token",
    ["", "av1", "av2.x.y", "av1.not-a-uuid." + "a" * 43, "av1.{tenant}.short"],
)
def test_malformed_and_unknown_tokens_get_the_same_answer(
    api: APIClient, tenant_a: TenantWorld, token: str
) -> None:
    token = token.format(tenant=tenant_a.tenant.pk)
    response = enroll(api, token) if token else enroll(api, "x")
    _refused(response, "invalid_invite")


def test_a_proof_signed_by_another_key_is_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    invite = create_invite(api, tenant_a)
    before = _state(tenant_a)

    response = enroll(
        api, invite["token"], SigningKey.generate(), signer=SigningKey.generate()
    )

    _refused(response, "invalid_proof")
    assert _state(tenant_a) == before
    # The invite was not consumed by the failed attempt.
    assert enroll(api, invite["token"]).status_code == 201


def test_a_proof_over_another_token_is_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    first = create_invite(api, tenant_a)
    second = create_invite(api, tenant_a)
    key = SigningKey.generate()
    body = {
        "invite_token": first["token"],
        "identity_key": b64(bytes(key.verify_key)),
        "device_name": "d",
        "proof": proof(key, second["token"]),
    }
    _refused(api.post("/api/v1/enrollments", body, format="json"), "invalid_proof")


@pytest.mark.parametrize(
    "identity_key",
    [
        b64(b"\x01" * 31),  # too short
        b64(b"\x00" * 32),  # a small-order point
        "not base64!",
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # URL-safe alphabet
    ],
)
def test_a_malformed_key_is_refused(
    api: APIClient, tenant_a: TenantWorld, identity_key: str
) -> None:
    invite = create_invite(api, tenant_a)
    before = _state(tenant_a)
    body = {
        "invite_token": invite["token"],
        "identity_key": identity_key,
        "device_name": "d",
        "proof": b64(b"\x00" * 64),
    }

    response = api.post("/api/v1/enrollments", body, format="json")

    _refused(response, "invalid_key")
    assert _state(tenant_a) == before


def test_an_enrolled_identity_key_cannot_enroll_again(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    key = SigningKey.generate()
    first, second = create_invite(api, tenant_a), create_invite(api, tenant_a)
    assert enroll(api, first["token"], key).status_code == 201
    before = _state(tenant_a)

    _refused(enroll(api, second["token"], key), "identity_key_in_use", 409)
    assert _state(tenant_a) == before


# --- Rate limit ------------------------------------------------------------------


def _attempt(api: APIClient, **meta: Any) -> int:
    key = SigningKey.generate()
    body = {
        "invite_token": "av1.00000000-0000-0000-0000-000000000000." + "a" * 43,
        "identity_key": b64(bytes(key.verify_key)),
        "device_name": "d",
        "proof": b64(b"\x00" * 64),
    }
    return api.post("/api/v1/enrollments", body, format="json", **meta).status_code


def test_the_sixth_attempt_in_ten_minutes_is_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    invite = create_invite(api, tenant_a)
    statuses = [_attempt(api) for _ in range(5)]

    response = enroll(api, invite["token"])

    assert statuses == [400] * 5
    _refused(response, "rate_limited", 429)
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 600
    assert _state(tenant_a)[0] == 4  # only the world's devices


def test_a_forged_forwarding_header_does_not_reset_the_count(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    statuses = [
        _attempt(api, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
        for i in range(6)
    ]
    assert statuses == [400] * 5 + [429]


def test_clients_behind_the_trusted_proxy_count_separately(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    config = {**settings.AGENTVAULT, "TRUSTED_PROXIES": ["10.0.0.0/8"]}
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    with override_settings(AGENTVAULT=config):
        first = [
            _attempt(api, **proxy, HTTP_X_FORWARDED_FOR="198.51.100.1")
            for _ in range(6)
        ]
        # The second client forges a leftmost entry; the proxy appended its
        # real address, which is what counts.
        second = [
            _attempt(api, **proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 198.51.100.2")
            for i in range(6)
        ]
    assert first == [400] * 5 + [429]
    assert second == [400] * 5 + [429]


def test_a_bearer_token_of_another_tenant_does_not_help(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    invite = create_invite(api, tenant_b)
    key = SigningKey.generate()
    body = {
        "invite_token": invite["token"],
        "identity_key": b64(bytes(key.verify_key)),
        "device_name": "d",
        "proof": proof(key, invite["token"]),
    }
    before = _state(tenant_b)
    as_admin(api, tenant_a)

    response = api.post("/api/v1/enrollments", body, format="json")

    _refused(response, "invalid_invite")
    assert _state(tenant_b) == before
