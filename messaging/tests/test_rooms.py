"""members_share_room: the room test the prekey directory relies on."""

from __future__ import annotations

import pytest

from messaging.models import Room, RoomMembership
from messaging.rooms import members_share_room
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _room(world: TenantWorld, *members: Member) -> Room:
    room = Room.objects.create(tenant=world.tenant, name="r")
    for member in members:
        RoomMembership.objects.create(tenant=world.tenant, room=room, member=member)
    return room


def test_it_answers_true_only_for_a_shared_room(tenant_a: TenantWorld) -> None:
    world = tenant_a
    with tenant_scope(world.tenant.pk):
        _room(world, world.owner, world.agent)
        _room(world, world.member)
        tid = world.tenant.pk

        assert members_share_room(tid, world.owner.pk, world.agent.pk) is True
        assert members_share_room(tid, world.agent.pk, world.owner.pk) is True
        assert members_share_room(tid, world.owner.pk, world.member.pk) is False
        assert members_share_room(tid, world.agent.pk, world.admin.pk) is False


def test_it_never_matches_members_of_another_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_b.tenant.pk):
        _room(tenant_b, tenant_b.owner, tenant_b.agent)

    with tenant_scope(tenant_a.tenant.pk):
        _room(tenant_a, tenant_a.owner)
        tid = tenant_a.tenant.pk
        assert members_share_room(tid, tenant_b.owner.pk, tenant_b.agent.pk) is False
        assert members_share_room(tid, tenant_a.owner.pk, tenant_b.agent.pk) is False
