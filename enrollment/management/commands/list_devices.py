"""``manage.py list_devices``: a tenant's devices with status and fingerprint."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentvault.commands import resolve_tenant
from enrollment.models import Device
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """List the devices of one tenant."""

    help = "List a tenant's devices: id, status, member, name, fingerprint, last seen."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--status", choices=Device.Status.values, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        """Print one line per device, oldest first."""
        tenant = resolve_tenant(options["tenant"])
        with tenant_scope(tenant.pk):
            devices = Device.objects.select_related("member").filter(
                tenant_id=tenant.pk
            )
            if options["status"]:
                devices = devices.filter(status=options["status"])
            rows = list(devices.order_by("created_at", "id"))

        for device in rows:
            seen = (
                f"{device.last_seen_at:%Y-%m-%d %H:%M}" if device.last_seen_at else "-"
            )
            self.stdout.write(
                f"{device.pk}  {device.status:<7}  {device.member.name} "
                f"(member {device.member_id}) / {device.name}  "
                f"[{device.fingerprint}]  last seen {seen}"
            )
        self.stderr.write(f"{len(rows)} device(s)")
