"""``manage.py revoke_device``: revoke a device for good."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentvault.commands import resolve_tenant
from enrollment.actions import do_revoke_device
from enrollment.management.commands._common import OPERATOR, load_device
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Revoke a device: its tokens stop working and its prekeys are deleted."""

    help = "Revoke a device (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--device", required=True, help="Device id.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Revoke in the tenant's scope."""
        tenant = resolve_tenant(options["tenant"])
        with tenant_scope(tenant.pk):
            device = load_device(tenant.pk, options["device"])
            device = do_revoke_device(device, acting=OPERATOR)
        self.stdout.write(f"Device {device.pk} ({device.name}) is {device.status}.")
