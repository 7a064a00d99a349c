"""``manage.py list_rooms``: rooms, members and the queue depth of their devices."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentvault.commands import resolve_tenant
from messaging import actions
from messaging.management.commands._common import _operator
from messaging.models import DeviceQueue
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Print each room with its members' active devices and their queue depth."""

    help = "List the rooms of a tenant with per-device queue depth."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Read in the tenant's scope and print."""
        tenant = resolve_tenant(options["tenant"])
        with tenant_scope(tenant.pk):
            depths = dict(DeviceQueue.objects.values_list("device_id", "depth"))
            for room in actions.get_rooms(member=_operator()):
                self.stdout.write(f"{room.pk}  {room.name}")
                for device in actions.get_room_devices(room):
                    depth = depths.get(device.pk, 0)
                    self.stdout.write(
                        f"    device {device.pk}  member {device.member_id}  "
                        f"queued {depth}"
                    )
