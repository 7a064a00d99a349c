"""GET/POST /rooms, POST/DELETE /rooms/{id}/members, GET /rooms/{id}/devices."""

from __future__ import annotations

import base64
import uuid

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from enrollment.models import Device
from messaging.models import RoomMembership
from messaging.tests.helpers import as_device, make_room
from tenants.scope import tenant_scope
from tests.support import TenantWorld, make_device

pytestmark = pytest.mark.django_db


def test_members_and_agents_list_only_their_rooms(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    mine = make_room(w.owner, w.agent, name="mine")
    make_room(w.owner, w.member, name="other")

    as_device(api, w.agent_device.device)
    response = api.get("/api/v1/rooms")

    assert response.status_code == 200
    assert response.json()["rooms"] == [
        {
            "id": str(mine.pk),
            "name": "mine",
            "created_at": response.json()["rooms"][0]["created_at"],
            "members": [str(w.owner.pk), str(w.agent.pk)],
        }
    ]


def test_admins_list_every_room_of_their_tenant_only(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    make_room(tenant_a.owner, tenant_a.agent, name="a1")
    make_room(tenant_a.member, name="a2")
    make_room(tenant_b.owner, name="b1")

    as_device(api, tenant_a.admin_device.device)
    names = [room["name"] for room in api.get("/api/v1/rooms").json()["rooms"]]

    assert names == ["a1", "a2"]


def test_an_admin_creates_a_room_with_an_audit_event(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    as_device(api, w.admin_device.device)

    response = api.post(
        "/api/v1/rooms",
        {"name": "ops", "members": [str(w.owner.pk), str(w.agent.pk)]},
        format="json",
    )

    assert response.status_code == 201, response.json()
    assert response.json()["members"] == [str(w.owner.pk), str(w.agent.pk)]
    with tenant_scope(w.tenant.pk):
        event = AuditEvent.objects.get(action="room.created")
        assert event.target_id == response.json()["id"]
        assert event.actor_id == str(w.admin_device.device.pk)


def test_a_misspelt_key_is_refused_not_ignored(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    as_device(api, w.admin_device.device)

    response = api.post(
        "/api/v1/rooms",
        {"name": "ops", "member_ids": [str(w.owner.pk)]},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["fields"] == {"member_ids": ["Unknown field."]}
    with tenant_scope(w.tenant.pk):
        assert not AuditEvent.objects.filter(action="room.created").exists()


def test_non_admins_cannot_create_rooms_or_change_members(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    for device in (w.member_device.device, w.agent_device.device):
        as_device(api, device)
        created = api.post("/api/v1/rooms", {"name": "x"}, format="json")
        added = api.post(
            f"/api/v1/rooms/{room.pk}/members",
            {"member_id": str(w.member.pk)},
            format="json",
        )
        assert created.status_code == 403
        assert added.status_code in (403, 404)
    with tenant_scope(w.tenant.pk):
        assert RoomMembership.objects.filter(member=w.member).count() == 0


def test_members_of_another_tenant_cannot_be_added(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner)
    as_device(api, w.admin_device.device)

    foreign = api.post(
        f"/api/v1/rooms/{room.pk}/members",
        {"member_id": str(tenant_b.agent.pk)},
        format="json",
    )
    missing = api.post(
        f"/api/v1/rooms/{room.pk}/members",
        {"member_id": str(uuid.uuid4())},
        format="json",
    )
    create = api.post(
        "/api/v1/rooms",
        {"name": "x", "members": [str(tenant_b.agent.pk)]},
        format="json",
    )

    assert foreign.status_code == missing.status_code == create.status_code == 404
    assert foreign.json() == missing.json() == create.json()


def test_rooms_of_another_tenant_answer_like_missing_ones(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    theirs = make_room(tenant_b.owner, tenant_b.agent)
    as_device(api, tenant_a.admin_device.device)

    for room_id in (theirs.pk, uuid.uuid4(), "not-a-uuid"):
        devices = api.get(f"/api/v1/rooms/{room_id}/devices")
        added = api.post(
            f"/api/v1/rooms/{room_id}/members",
            {"member_id": str(tenant_a.member.pk)},
            format="json",
        )
        removed = api.delete(
            f"/api/v1/rooms/{room_id}/members",
            {"member_id": str(tenant_b.agent.pk)},
            format="json",
        )
        assert devices.status_code == added.status_code == removed.status_code == 404
        assert devices.json()["code"] == "not_found"
    with tenant_scope(tenant_b.tenant.pk):
        assert RoomMembership.objects.filter(room=theirs).count() == 2


def test_adding_and_removing_members_is_audited(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner)
    as_device(api, w.admin_device.device)
    url = f"/api/v1/rooms/{room.pk}/members"

    added = api.post(url, {"member_id": str(w.agent.pk)}, format="json")
    again = api.post(url, {"member_id": str(w.agent.pk)}, format="json")
    removed = api.delete(url, {"member_id": str(w.agent.pk)}, format="json")
    gone = api.delete(f"{url}/{w.agent.pk}")

    assert (added.status_code, again.status_code) == (201, 200)
    assert (removed.status_code, gone.status_code) == (204, 404)
    with tenant_scope(w.tenant.pk):
        actions = list(
            AuditEvent.objects.order_by("id").values_list("action", flat=True)
        )
        assert actions == ["room.member_added", "room.member_removed"]


def test_a_member_named_in_the_path_is_removed_and_cannot_be_posted(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.admin_device.device)
    url = f"/api/v1/rooms/{room.pk}/members/{w.agent.pk}"

    posted = api.post(url, {"member_id": str(w.agent.pk)}, format="json")
    removed = api.delete(url)

    assert posted.status_code == 405
    assert posted.json() == {
        "code": "method_not_allowed",
        "message": "This method is not allowed here.",
        "fields": {},
    }
    assert removed.status_code == 204
    with tenant_scope(w.tenant.pk):
        members = RoomMembership.objects.filter(room=room)
        assert list(members.values_list("member_id", flat=True)) == [w.owner.pk]


def test_room_devices_lists_active_devices_with_identity_keys(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    with tenant_scope(w.tenant.pk):
        make_device(w.agent, name="pending", status=Device.Status.PENDING)
        make_device(w.agent, name="revoked", status=Device.Status.REVOKED)
    room = make_room(w.owner, w.agent)
    as_device(api, w.agent_device.device)

    response = api.get(f"/api/v1/rooms/{room.pk}/devices")

    assert response.status_code == 200
    devices = response.json()["devices"]
    assert {d["device_id"] for d in devices} == {
        str(w.owner_device.device.pk),
        str(w.agent_device.device.pk),
    }
    agent = next(d for d in devices if d["device_id"] == str(w.agent_device.device.pk))
    assert base64.b64decode(agent["identity_key"]) == bytes(
        w.agent_device.device.identity_key
    )
    assert agent["member_id"] == str(w.agent.pk)
    assert "queue_depth" not in agent


def test_room_devices_of_a_room_the_caller_is_not_in_is_not_found(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.member)
    as_device(api, w.agent_device.device)

    response = api.get(f"/api/v1/rooms/{room.pk}/devices")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_admins_see_queue_depth_per_device(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    for _ in range(2):
        api.post(
            f"/api/v1/rooms/{room.pk}/messages",
            {
                "client_message_id": uuid.uuid4().hex,
                "envelopes": [
                    {"device_id": str(w.agent_device.device.pk), "ciphertext": "AA=="}
                ],
            },
            format="json",
        )

    response = api.get(f"/api/v1/rooms/{room.pk}/devices")

    depths = {d["device_id"]: d["queue_depth"] for d in response.json()["devices"]}
    assert depths == {
        str(w.agent_device.device.pk): 2,
        str(w.owner_device.device.pk): 0,
    }
