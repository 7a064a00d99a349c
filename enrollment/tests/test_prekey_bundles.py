"""POST /api/v1/members/{member_id}/prekey-bundles."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from enrollment.tests.helpers import PrekeySet, b64, make_prekeys
from messaging.models import Room, RoomMembership
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import DeviceIdentity, TenantWorld, make_device

pytestmark = pytest.mark.django_db


def _room(world: TenantWorld, *members: Member) -> None:
    with tenant_scope(world.tenant.pk):
        room = Room.objects.create(tenant=world.tenant, name="r")
        for member in members:
            RoomMembership.objects.create(tenant=world.tenant, room=room, member=member)


def _publish(api: APIClient, identity: DeviceIdentity, **kw: Any) -> PrekeySet:
    prekeys = make_prekeys(identity.signing_key, **kw)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {identity.token}")
    response = api.put("/api/v1/devices/me/prekeys", prekeys.body(), format="json")
    assert response.status_code == 200, response.json()
    return prekeys


def _claim(api: APIClient, caller: DeviceIdentity, member: Member | uuid.UUID) -> Any:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {caller.token}")
    member_id = member if isinstance(member, uuid.UUID) else member.pk
    return api.post(f"/api/v1/members/{member_id}/prekey-bundles")


def test_bundles_hand_out_one_time_prekeys_oldest_first_then_none(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    _room(tenant_a, tenant_a.owner, tenant_a.agent)
    agent = tenant_a.agent_device
    published = _publish(api, agent, ids=[30, 10, 20])

    claims = [_claim(api, tenant_a.owner_device, tenant_a.agent) for _ in range(4)]

    assert all(response.status_code == 200 for response in claims)
    bundles = [response.json() for response in claims]
    assert [len(b) for b in bundles] == [1, 1, 1, 1]
    first = bundles[0][0]
    assert first["device_id"] == str(agent.device.pk)
    assert first["identity_key"] == b64(bytes(agent.signing_key.verify_key))
    assert first["signed_prekey"] == {
        "id": 1,
        "public_key": b64(published.signed_public),
        "signature": b64(published.signed_signature),
    }
    handed = [b[0]["one_time_prekey"] for b in bundles]
    by_id = dict(published.one_time)
    assert [item["id"] for item in handed[:3]] == [30, 10, 20]  # upload order
    for item in handed[:3]:
        assert base64.b64decode(item["public_key"]) == by_id[item["id"]]
    assert handed[3] is None
    assert bundles[3][0]["signed_prekey"]["id"] == 1


def test_consumed_ids_never_come_back(api: APIClient, tenant_a: TenantWorld) -> None:
    _room(tenant_a, tenant_a.owner, tenant_a.agent)
    agent = tenant_a.agent_device
    published = _publish(api, agent, ids=[1, 2])
    _claim(api, tenant_a.owner_device, tenant_a.agent)

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {agent.token}")
    again = api.put(
        "/api/v1/devices/me/prekeys",
        published.body(with_signed=False),
        format="json",
    )
    status = api.get("/api/v1/devices/me/prekeys").json()

    assert (again.status_code, again.json()["code"]) == (409, "prekey_id_reused")
    assert again.json()["fields"] == {"one_time_prekeys": [1]}
    assert status["one_time_prekeys"] == 1
    left = _claim(api, tenant_a.owner_device, tenant_a.agent).json()
    assert left[0]["one_time_prekey"]["id"] == 2
    assert (
        _claim(api, tenant_a.owner_device, tenant_a.agent).json()[0]["one_time_prekey"]
        is None
    )


def test_only_active_devices_other_than_the_caller_are_listed(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    owner = tenant_a.owner_device
    with tenant_scope(tenant_a.tenant.pk):
        second = make_device(tenant_a.owner, name="tablet")
        pending = make_device(tenant_a.owner, name="new", status="pending")
        revoked = make_device(tenant_a.owner, name="old", status="revoked")
    for identity in (owner, second):
        _publish(api, identity)

    mine = _claim(api, owner, tenant_a.owner).json()

    assert [b["device_id"] for b in mine] == [str(second.device.pk)]
    assert {str(pending.device.pk), str(revoked.device.pk)}.isdisjoint(
        b["device_id"] for b in mine
    )


def test_members_without_a_shared_room_get_no_bundle(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    _room(tenant_a, tenant_a.owner, tenant_a.agent)
    _publish(api, tenant_a.agent_device)

    response = _claim(api, tenant_a.member_device, tenant_a.agent)

    assert (response.status_code, response.json()["code"]) == (403, "no_shared_room")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.agent_device.token}")
    assert api.get("/api/v1/devices/me/prekeys").json()["one_time_prekeys"] == 10


def test_a_member_of_another_tenant_is_not_found(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    _publish(api, tenant_b.agent_device)

    foreign = _claim(api, tenant_a.owner_device, tenant_b.agent)
    missing = _claim(api, tenant_a.owner_device, uuid.uuid4())

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


def test_claims_are_rate_limited_per_caller_and_target_device(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    _room(tenant_a, tenant_a.owner, tenant_a.agent, tenant_a.member)
    _publish(api, tenant_a.agent_device)
    with override_settings(ENROLLMENT={"BUNDLE_RATE": "3/m"}):
        owner = [_claim(api, tenant_a.owner_device, tenant_a.agent) for _ in range(4)]
        member = _claim(api, tenant_a.member_device, tenant_a.agent)

    assert [r.status_code for r in owner] == [200, 200, 200, 429]
    assert owner[3].json()["code"] == "rate_limited"
    assert int(owner[3]["Retry-After"]) >= 1
    assert member.status_code == 200
    # The refused claim took no key: 10 - 3 (owner) - 1 (member).
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.agent_device.token}")
    assert api.get("/api/v1/devices/me/prekeys").json()["one_time_prekeys"] == 6
