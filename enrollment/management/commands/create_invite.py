"""``manage.py create_invite``: an invite for a new member or another device."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentvault.commands import resolve_tenant
from agentvault.errors import ApiError
from enrollment.actions import do_create_invite
from enrollment.management.commands._common import OPERATOR
from tenants.models import Member
from tenants.scope import tenant_scope


class Command(BaseCommand):
    """Create an invite and print its token, which is shown only this once."""

    help = (
        "Create an invite for a new member (--name, --kind, --role) or for "
        "another device of an existing member (--member). Prints the token once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--name", help="Name of the new member.")
        parser.add_argument("--kind", choices=Member.Kind.values, default=None)
        parser.add_argument("--role", choices=Member.Role.values, default=None)
        parser.add_argument("--member", help="Id of an existing member.")
        parser.add_argument(
            "--hours", type=float, default=None, help="Lifetime (default 24, max 168)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Create the invite in the tenant's scope."""
        tenant = resolve_tenant(options["tenant"])
        if bool(options["name"]) == bool(options["member"]):
            raise CommandError("Give --name (a new member) or --member, not both.")
        if options["member"] and (options["kind"] or options["role"]):
            raise CommandError("--kind and --role describe a new member only.")
        kind, role = options["kind"] or "", options["role"] or ""
        if kind and role and (kind == "agent") != (role == "agent"):
            raise CommandError("Agents have the agent role, and only agents do.")
        if role == "agent":
            kind = "agent"
        lifetime = None if options["hours"] is None else int(options["hours"] * 3600)

        with tenant_scope(tenant.pk):
            member = None
            if options["member"]:
                member = self._member(tenant.pk, options["member"])
            try:
                created = do_create_invite(
                    tenant_id=tenant.pk,
                    acting=OPERATOR,
                    member=member,
                    name=options["name"] or "",
                    kind=kind,
                    role=role,
                    lifetime=lifetime,
                )
            except ApiError as exc:
                raise CommandError(exc.message) from None

        invite = created.invite
        self.stderr.write(
            f"Invite {invite.pk} for {invite.member_name or member} expires "
            f"{invite.expires_at:%Y-%m-%d %H:%M} UTC. The token is shown only once:"
        )
        self.stdout.write(created.token)

    def _member(self, tenant_id: uuid.UUID, value: str) -> Member:
        try:
            member_id = uuid.UUID(value)
        except ValueError:
            raise CommandError(f"{value!r} is not a member id (a UUID).") from None
        member = (
            Member.objects.active().filter(pk=member_id, tenant_id=tenant_id).first()
        )
        if member is None:
            raise CommandError(f"No active member {value} in this tenant.")
        return member
