"""``manage.py prune``: delete what is past retention, tenant by tenant.

- Deliveries older than ``MESSAGING["RETENTION_DAYS"]`` (30 days default),
  and message rows older than that with no delivery left.
- Expired invites and expired device challenges, through
  ``enrollment.actions.do_prune_expired`` (the enrollment app owns those
  models and their rules).
"""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from agentvault.commands import resolve_tenant
from enrollment.actions import do_prune_expired
from messaging import actions
from messaging.conf import messaging_settings
from tenants.models import Tenant
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Delete over-retention deliveries and expired enrollment artefacts."""

    help = "Delete deliveries past retention, expired invites and challenges."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", help="Tenant id or slug (default: all).")
        parser.add_argument(
            "--retention-days",
            type=int,
            default=None,
            help="Override MESSAGING['RETENTION_DAYS'].",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Prune each tenant in its own scope."""
        days = options["retention_days"]
        if days is None:
            days = int(messaging_settings.RETENTION_DAYS)
        if days < 1:
            self.stderr.write("--retention-days must be at least 1.")
            raise SystemExit(2)
        now = timezone.now()
        cutoff = now - datetime.timedelta(days=days)

        if options["tenant"]:
            tenants = [resolve_tenant(options["tenant"])]
        else:
            tenants = list(Tenant.objects.order_by("slug"))
        for tenant in tenants:
            with tenant_scope(tenant.pk):
                deliveries, messages = actions.do_prune_deliveries(older_than=cutoff)
                enrollment = do_prune_expired(now=now)
            line = (
                f"{tenant.slug}: {deliveries} deliveries and {messages} messages "
                f"older than {days} days deleted"
            )
            self.stdout.write(f"{line}; {enrollment}.")
