"""The whole life of a device, and no secret in any log line on the way."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from audit.models import AuditEvent
from audit.verify import get_chain_report
from enrollment.models import Device, OneTimePrekey, SignedPrekey
from enrollment.tests.helpers import (
    as_admin,
    captured_logs,
    create_invite,
    enroll,
    make_prekeys,
    request_token,
)
from messaging.models import Room, RoomMembership
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _events(world: TenantWorld) -> list[tuple[str, str, str]]:
    with tenant_scope(world.tenant.pk):
        return list(
            AuditEvent.objects.order_by("id").values_list(
                "action", "actor_kind", "target_id"
            )
        )


def _live(
    api: APIClient, world: TenantWorld, token: str, key: SigningKey
) -> dict[str, Any]:
    """Enroll, approve, authenticate and publish prekeys; return what was seen."""
    enrolled = enroll(api, token, key)
    assert enrolled.status_code == 201
    device_id = enrolled.json()["device_id"]

    as_admin(api, world)
    listed = {d["id"]: d for d in api.get("/api/v1/devices").json()}
    assert listed[device_id]["fingerprint"] == enrolled.json()["fingerprint"]
    assert api.post(f"/api/v1/devices/{device_id}/approve").status_code == 200

    issued = request_token(api, device_id, key)
    assert issued.status_code == 200
    access = issued.json()["access_token"]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert api.get("/api/v1/devices/me").json()["status"] == "active"
    upload = api.put(
        "/api/v1/devices/me/prekeys", make_prekeys(key).body(), format="json"
    )
    assert upload.json() == {"one_time_prekeys": 10}
    return {
        "device_id": device_id,
        "access": access,
        "member_id": enrolled.json()["member_id"],
    }


def test_invite_enroll_approve_token_prekeys_revoke_and_enroll_again(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    world = tenant_a
    invite = create_invite(api, world, name="Scout", kind="agent")
    first_key = SigningKey.generate()
    first = _live(api, world, invite["token"], first_key)

    # The owner shares a room with the new agent and claims its bundle.
    with tenant_scope(world.tenant.pk):
        room = Room.objects.create(tenant=world.tenant, name="owner-scout")
        for member_id in (world.owner.pk, first["member_id"]):
            RoomMembership.objects.create(
                tenant=world.tenant, room=room, member_id=member_id
            )
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {world.owner_device.token}")
    bundle = api.post(f"/api/v1/members/{first['member_id']}/prekey-bundles").json()
    assert [b["device_id"] for b in bundle] == [first["device_id"]]
    assert bundle[0]["one_time_prekey"]["id"] == 1

    as_admin(api, world)
    revoked = api.post(f"/api/v1/devices/{first['device_id']}/revoke")
    assert revoked.json()["status"] == "revoked"
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {first['access']}")
    assert api.get("/api/v1/devices/me").json()["code"] == "device_revoked"
    assert request_token(api, first["device_id"], first_key).status_code == 401

    # Enrolling again: a new invite for the same member, a new key and id.
    again = create_invite(api, world, member_id=first["member_id"])
    second = _live(api, world, again["token"], SigningKey.generate())
    assert second["device_id"] != first["device_id"]
    assert second["member_id"] == first["member_id"]
    with tenant_scope(world.tenant.pk):
        old = Device.objects.get(pk=first["device_id"])
        assert old.status == "revoked"
        assert OneTimePrekey.objects.filter(device=old).count() == 0
        assert SignedPrekey.objects.filter(device=old).count() == 0
        assert OneTimePrekey.objects.filter(device_id=second["device_id"]).count() == 10

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {world.owner_device.token}")
    bundle = api.post(f"/api/v1/members/{first['member_id']}/prekey-bundles").json()
    assert [b["device_id"] for b in bundle] == [second["device_id"]]
    assert bundle[0]["one_time_prekey"]["id"] == 1  # the new device's own key 1

    actions = [action for action, _, _ in _events(world)]
    assert actions == [
        "invite.created",
        "device.enrolled",
        "device.approved",
        "device.token_issued",
        "device.revoked",
        "device.token_refused",
        "invite.created",
        "device.enrolled",
        "device.approved",
        "device.token_issued",
    ]
    with tenant_scope(world.tenant.pk):
        report = get_chain_report(world.tenant.pk)
    assert report.ok and report.events == len(actions)


def test_invite_secrets_and_tokens_appear_in_no_log_line(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    with captured_logs() as lines:
        invite = create_invite(api, tenant_a, name="Scout", kind="agent")
        token = invite["token"]
        secret = token.split(".")[2]
        key = SigningKey.generate()
        seen = _live(api, tenant_a, token, key)
        # Failures log too: a reused invite, a bad token, a forged challenge.
        assert enroll(api, token).status_code == 400
        assert enroll(api, token[:-1] + "A").status_code in (400, 429)
        assert (
            request_token(api, seen["device_id"], SigningKey.generate()).status_code
            == 401
        )
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {seen['access']}x")
        assert api.get("/api/v1/devices/me").status_code == 401

    text = "\n".join(lines)
    # The capture does see enrollment's own records and the request logs.
    assert "Created invite" in text and "Enrolled device" in text
    assert "/api/v1/enrollments" in text
    secret_forms = [
        secret,
        token,
        base64.b64encode(secret.encode()).decode(),
        seen["access"],
        seen["access"].split(".")[2],  # the JWT signature part
    ]
    for value in secret_forms:
        assert value not in text
