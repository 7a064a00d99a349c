"""``manage.py audit_verify``: walk each tenant's hash chain."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentvault.commands import resolve_tenant
from audit.verify import get_chain_report
from tenants.models import Tenant
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Verify audit chains and report the first break of each."""

    help = "Verify the audit hash chain of one tenant (--tenant) or of all."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", help="Tenant id or slug (default: all).")

    def handle(self, *args: Any, **options: Any) -> None:
        """Walk each chain in its own tenant scope; fail on any break."""
        if options["tenant"]:
            tenants = [resolve_tenant(options["tenant"])]
        else:
            tenants = list(Tenant.objects.order_by("slug"))

        broken = 0
        for tenant in tenants:
            with tenant_scope(tenant.pk):
                report = get_chain_report(tenant.pk)
            if report.ok:
                self.stdout.write(
                    f"{tenant.slug}: {report.events} events, chain intact"
                )
                continue
            broken += 1
            assert report.first_break is not None
            self.stderr.write(
                f"{tenant.slug}: chain broken at event {report.first_break.event_id} "
                f"({report.first_break.reason})"
            )
        if broken:
            raise CommandError(f"{broken} audit chain(s) broken.")
