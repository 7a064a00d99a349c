"""``manage.py create_room``: create a room with its first members."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentvault.commands import resolve_tenant
from messaging import actions, events
from messaging.management.commands._common import OPERATOR, load_member, publish
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Create a room, e.g. an owner-agent conversation."""

    help = "Create a room in a tenant with the given members."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--name", required=True, help="Room name.")
        parser.add_argument(
            "--member", action="append", default=[], help="Member id (repeatable)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Create the room in the tenant's scope."""
        tenant = resolve_tenant(options["tenant"])
        with events.collect_events() as collected:
            with tenant_scope(tenant.pk):
                members = [load_member(value) for value in options["member"]]
                room = actions.do_create_room(
                    options["name"],
                    tenant_id=tenant.pk,
                    members=members,
                    acting=OPERATOR,
                )
        publish(collected)
        self.stdout.write(f"Room {room.pk} ({room.name}) with {len(members)} members.")
