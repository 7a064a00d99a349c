"""``manage.py remove_room_member``: take a member out of a room."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentvault.commands import resolve_tenant
from messaging import actions, events
from messaging.management.commands._common import (
    OPERATOR,
    load_member,
    load_room,
    publish,
)
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Remove a member from a room (idempotent)."""

    help = "Remove a member from a room."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--room", required=True, help="Room id or unique name.")
        parser.add_argument("--member", required=True, help="Member id.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Remove the member in the tenant's scope."""
        tenant = resolve_tenant(options["tenant"])
        with events.collect_events() as collected:
            with tenant_scope(tenant.pk):
                room = load_room(options["room"])
                member = load_member(options["member"])
                removed = actions.do_remove_room_member(room, member, acting=OPERATOR)
        publish(collected)
        state = "removed from" if removed else "was not in"
        self.stdout.write(f"Member {member.pk} {state} room {room.pk}.")
