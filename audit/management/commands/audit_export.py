"""``manage.py audit_export``: a tenant's audit events as JSON lines."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentvault.commands import resolve_tenant
from audit.models import AuditEvent
from audit.verify import iter_events
from tenants.scope import tenant_scope


def event_as_dict(event: AuditEvent) -> dict[str, Any]:
    """Return the exported form of an event."""
    return {
        "id": event.pk,
        "tenant_id": str(event.tenant_id),
        "occurred_at": event.occurred_at.isoformat(),
        "actor": {"kind": event.actor_kind, "id": event.actor_id},
        "action": event.action,
        "target": {"kind": event.target_kind, "id": event.target_id},
        "client_ip": event.client_ip,
        "correlation_id": event.correlation_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


class Command(BaseCommand):
    """Write one tenant's audit events, oldest first, as JSON lines."""

    help = "Export a tenant's audit events as JSON lines (to stdout or --output)."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--output", help="File to write (default: stdout).")

    def handle(self, *args: Any, **options: Any) -> None:
        """Stream the events inside the tenant's scope."""
        tenant = resolve_tenant(options["tenant"])
        try:
            out: Any = (
                open(options["output"], "w") if options["output"] else self.stdout
            )
        except OSError as exc:
            raise CommandError(
                f"Cannot write {options['output']}: {exc.strerror}."
            ) from None

        count = 0
        try:
            with tenant_scope(tenant.pk):
                for event in iter_events(tenant.pk):
                    out.write(json.dumps(event_as_dict(event), sort_keys=True) + "\n")
                    count += 1
        finally:
            if out is not self.stdout:
                out.close()
        self.stderr.write(f"Exported {count} events of {tenant.slug}.")
