"""Tenant console pages of rooms, memberships and queues."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEvent
from messaging.actions import do_send_message
from messaging.models import RoomMembership
from messaging.store import Envelope
from messaging.tests.helpers import make_room
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(client: Client, tenant_a: TenantWorld) -> Client:
    client.force_login(tenant_a.console_user)
    return client


def test_room_list_shows_only_this_tenant(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    make_room(tenant_a.owner, name="alpha-room")
    theirs = make_room(tenant_b.owner, name="bravo-room")

    page = console.get("/admin/messaging/room/").content.decode()
    other = console.get(f"/admin/messaging/room/{theirs.pk}/change/")

    assert "alpha-room" in page and "bravo-room" not in page
    assert other.status_code in (302, 404)


def test_adding_a_membership_in_the_console_is_audited(
    console: Client, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner)

    response = console.post(
        "/admin/messaging/roommembership/add/",
        {"room": str(room.pk), "member": str(w.agent.pk)},
    )

    assert response.status_code == 302
    with tenant_scope(w.tenant.pk):
        assert RoomMembership.objects.filter(room=room, member=w.agent).exists()
        assert AuditEvent.objects.filter(action="room.member_added").count() == 1


def test_queue_depth_is_visible_per_device(
    console: Client, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    with tenant_scope(w.tenant.pk):
        for cid in ("1", "2", "3"):
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=w.owner_device.device,
                client_message_id=cid,
                envelopes=[Envelope(w.agent_device.device.pk, b"x")],
            )

    page = console.get("/admin/messaging/devicequeue/").content.decode()

    assert '<td class="field-depth">3</td>' in page
