"""Shared parts of the messaging operator commands."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentvault.commands import resolve_tenant
from agentvault.errors import NotFoundError
from messaging import actions, events
from messaging.models import Room
from tenants.models import Member
from tenants.scope import tenant_scope

#: How operator commands appear in the audit trail.
OPERATOR = ("operator", "manage.py")


def load_room(value: str) -> Room:
    """Return a room of the current tenant scope by id, or a clear error."""
    rooms = list(Room.objects.filter(name=value)[:2])
    if len(rooms) == 1:
        return rooms[0]
    try:
        return actions.access_room(value, member=_operator())
    except NotFoundError:
        if rooms:
            raise CommandError(
                f"Several rooms of this tenant are named {value!r}; give the id."
            ) from None
        raise CommandError(f"No room {value!r} in this tenant.") from None


def load_member(value: str) -> Member:
    """Return an active member of the current tenant scope, or a clear error."""
    try:
        return actions.access_member(value)
    except NotFoundError:
        raise CommandError(f"No active member {value!r} in this tenant.") from None


def _operator() -> Member:
    # Operators see every room, like a tenant admin.
    return Member(role=Member.Role.OWNER_ADMIN)


def publish(collected: list[events.Outgoing]) -> None:
    """Send the collected events in one event loop (commands have none)."""
    if collected:
        asyncio.run(events.apublish(collected))


class RoomMembershipCommand(BaseCommand):
    """Base of the commands that add a member to a room or take one out."""

    # Subclasses name the action and the two outcomes of the message.
    done_state = ""
    unchanged_state = ""

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--room", required=True, help="Room id or unique name.")
        parser.add_argument("--member", required=True, help="Member id.")

    def change(self, room: Room, member: Member) -> bool:
        """Apply the change; return whether anything changed."""
        raise NotImplementedError

    def handle(self, *args: Any, **options: Any) -> None:
        """Change the membership in the tenant's scope, then publish."""
        tenant = resolve_tenant(options["tenant"])
        with events.collect_events() as collected:
            with tenant_scope(tenant.pk):
                room = load_room(options["room"])
                member = load_member(options["member"])
                changed = self.change(room, member)
        publish(collected)
        state = self.done_state if changed else self.unchanged_state
        self.stdout.write(f"Member {member.pk} {state} room {room.pk}.")
