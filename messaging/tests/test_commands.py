"""Operator commands: create_room, add/remove_room_member, list_rooms, prune."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from messaging.actions import do_send_message
from messaging.models import Delivery, DeviceQueue, Message, Room, RoomMembership
from messaging.store import Envelope
from messaging.tests.helpers import make_room
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_room_and_manage_members(tenant_a: TenantWorld) -> None:
    w = tenant_a
    _run(
        "create_room", "--tenant", "alpha", "--name", "ops", "--member", str(w.owner.pk)
    )
    _run(
        "add_room_member",
        "--tenant",
        "alpha",
        "--room",
        "ops",
        "--member",
        str(w.agent.pk),
    )
    with tenant_scope(w.tenant.pk):
        room = Room.objects.get(name="ops")
        members = set(
            RoomMembership.objects.filter(room=room).values_list("member_id", flat=True)
        )
        assert members == {w.owner.pk, w.agent.pk}

    _run(
        "remove_room_member",
        "--tenant",
        "alpha",
        "--room",
        str(room.pk),
        "--member",
        str(w.owner.pk),
    )
    with tenant_scope(w.tenant.pk):
        assert list(RoomMembership.objects.values_list("member_id", flat=True)) == [
            w.agent.pk
        ]


def test_commands_cannot_reach_another_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    theirs = make_room(tenant_b.owner, name="theirs")

    with pytest.raises(CommandError, match="No room"):
        _run(
            "add_room_member",
            "--tenant",
            "alpha",
            "--room",
            str(theirs.pk),
            "--member",
            str(tenant_a.agent.pk),
        )
    with pytest.raises(CommandError, match="No active member"):
        _run(
            "create_room",
            "--tenant",
            "alpha",
            "--name",
            "x",
            "--member",
            str(tenant_b.agent.pk),
        )
    with pytest.raises(CommandError, match="No tenant"):
        _run("create_room", "--tenant", "nope", "--name", "x")


def test_list_rooms_shows_queue_depth(tenant_a: TenantWorld) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent, name="pair")
    with tenant_scope(w.tenant.pk):
        for cid in ("1", "2"):
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=w.owner_device.device,
                client_message_id=cid,
                envelopes=[Envelope(w.agent_device.device.pk, b"x")],
            )

    out = _run("list_rooms", "--tenant", "alpha")

    assert f"device {w.agent_device.device.pk}  member {w.agent.pk}  queued 2" in out
    assert f"device {w.owner_device.device.pk}  member {w.owner.pk}  queued 0" in out


def test_prune_deletes_only_deliveries_past_retention(tenant_a: TenantWorld) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    agent = w.agent_device.device
    with tenant_scope(w.tenant.pk):
        for cid in ("old", "new"):
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=w.owner_device.device,
                client_message_id=cid,
                envelopes=[Envelope(agent.pk, b"x")],
            )
        old = timezone.now() - datetime.timedelta(days=31)
        Message.objects.filter(client_message_id="old").update(created_at=old)
        Delivery.objects.filter(message__client_message_id="old").update(created_at=old)

    out = _run("prune")

    assert "alpha: 1 deliveries and 1 messages older than 30 days deleted" in out
    with tenant_scope(w.tenant.pk):
        assert list(Delivery.objects.values_list("seq", flat=True)) == [2]
        assert list(Message.objects.values_list("client_message_id", flat=True)) == [
            "new"
        ]
        assert DeviceQueue.objects.get(device=agent).depth == 1


def test_prune_deletes_expired_invites_and_challenges_only(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    from enrollment.actions import do_create_invite, do_issue_challenge
    from enrollment.models import DeviceChallenge, Invite

    now = timezone.now()
    for world in (tenant_a, tenant_b):
        for _ in range(2):
            do_create_invite(tenant_id=world.tenant.pk, acting="operator", name="n")
        do_issue_challenge(world.member_device.device.pk)
        do_issue_challenge(world.agent_device.device.pk)
    with tenant_scope(tenant_a.tenant.pk):
        first = Invite.objects.order_by("created_at").first()
        assert first is not None
        Invite.objects.filter(pk=first.pk).update(
            expires_at=now - datetime.timedelta(minutes=1)
        )
        DeviceChallenge.objects.filter(
            device_id=tenant_a.agent_device.device.pk
        ).update(expires_at=now - datetime.timedelta(seconds=1))

    out = _run("prune", "--tenant", "alpha")

    assert "1 expired invites and 1 expired challenges deleted" in out
    with tenant_scope(tenant_a.tenant.pk):
        assert Invite.objects.count() == 1
        assert DeviceChallenge.objects.count() == 1
    with tenant_scope(tenant_b.tenant.pk):
        assert (Invite.objects.count(), DeviceChallenge.objects.count()) == (2, 2)


@pytest.mark.parametrize(
    ("rooms", "message"),
    [(0, "No room 'ops' in this tenant."), (2, "Several rooms of this tenant")],
)
def test_a_room_name_that_names_no_room_or_several_says_which(
    tenant_a: TenantWorld, rooms: int, message: str
) -> None:
    w = tenant_a
    for _ in range(rooms):
        make_room(w.owner, name="ops")
    args = ["--tenant", "alpha", "--room", "ops", "--member", str(w.agent.pk)]

    with pytest.raises(CommandError, match=message):
        _run("add_room_member", *args)
