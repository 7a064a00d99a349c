"""``manage.py approve_device``: activate a pending device."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentvault.commands import resolve_tenant
from agentvault.errors import ApiError
from enrollment.actions import do_approve_device
from enrollment.management.commands._common import OPERATOR, load_device
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Approve a device after comparing the fingerprint it shows."""

    help = "Approve a pending device. Compare --fingerprint with the device's screen."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--device", required=True, help="Device id.")
        parser.add_argument(
            "--fingerprint",
            required=True,
            help="Fingerprint read from the device's screen (`agentvault status`);"
            " approval stops if it differs. There is no approval without it.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Approve in the tenant's scope; idempotent."""
        tenant = resolve_tenant(options["tenant"])
        with tenant_scope(tenant.pk):
            device = load_device(tenant.pk, options["device"])
            # Groups are fixed-width digits: spacing carries no meaning.
            given = "".join(options["fingerprint"].split())
            if given != "".join(device.fingerprint.split()):
                raise CommandError(
                    "The fingerprint differs from the enrolled key: not approved."
                )
            try:
                device = do_approve_device(device, acting=OPERATOR)
            except ApiError as exc:
                raise CommandError(exc.message) from None

        self.stdout.write(
            f"Device {device.pk} ({device.name}) of {device.member.name} is "
            f"{device.status}. Fingerprint: {device.fingerprint}"
        )
