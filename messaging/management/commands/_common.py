"""Shared parts of the messaging operator commands."""

from __future__ import annotations

import asyncio

from django.core.management.base import CommandError

from agentvault.errors import NotFoundError
from messaging import actions, events
from messaging.models import Room
from tenants.models import Member

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
        hint = " (several rooms have that name; give its id)" if rooms else ""
        raise CommandError(f"No room {value!r} in this tenant{hint}.") from None


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
