"""Writes on tenants and members, each with its audit event."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.db import transaction
from django.utils.text import slugify

import audit
from tenants.models import Member, Tenant, User
from tenants.scope import tenant_scope

logger = logging.getLogger(__name__)


class TenantExistsError(ValueError):
    """A tenant with that slug exists already."""


def do_create_tenant(
    *,
    name: str,
    slug: str | None = None,
    admin_username: str,
    admin_password: str | None = None,
    admin_name: str | None = None,
) -> tuple[Tenant, Member, str]:
    """Create a tenant with its first owner admin and a console login.

    Return the tenant, the owner admin member and the console password (the
    one given, or a generated one to show once).
    """
    slug = slug or slugify(name)
    password = admin_password or secrets.token_urlsafe(18)

    with transaction.atomic():
        if Tenant.objects.filter(slug=slug).exists():
            raise TenantExistsError(slug)
        tenant = Tenant.objects.create(name=name, slug=slug)
        user = User.objects.create_user(
            username=admin_username, password=password, tenant=tenant
        )
        user.is_staff = True
        user.save(update_fields=["is_staff"])

        with tenant_scope(tenant.pk):
            owner = Member.objects.create(
                tenant=tenant,
                name=admin_name or admin_username,
                role=Member.Role.OWNER_ADMIN,
                user=user,
            )
            audit.record("tenant.created", actor="operator", target=tenant)
            audit.record(
                "member.created",
                actor="operator",
                target=owner,
                details={"role": owner.role, "kind": owner.kind},
            )

    logger.info("Created tenant %s with owner admin %s", tenant.pk, owner.pk)
    return tenant, owner, password


def do_add_member(member: Member, *, acting: Any) -> Member:
    """Save a new member of its tenant and record it."""
    with tenant_scope(member.tenant_id):
        member.save(force_insert=True)
        audit.record(
            "member.created",
            actor=acting,
            target=member,
            details={"role": member.role, "kind": member.kind},
        )
    return member


def do_update_member(
    member: Member, *, changed: dict[str, Any], previous: dict[str, Any], acting: Any
) -> Member:
    """Record a console change of a member: role changes get their own event."""
    with tenant_scope(member.tenant_id):
        member.save()
        if "role" in changed:
            audit.record(
                "member.role_changed",
                actor=acting,
                target=member,
                details={"from": previous.get("role"), "to": member.role},
            )
        rest = sorted(set(changed) - {"role"})
        if rest:
            audit.record(
                "member.updated", actor=acting, target=member, details={"fields": rest}
            )
    return member


def do_update_tenant_settings(
    tenant: Tenant, *, fields: list[str], acting: Any
) -> Tenant:
    """Save a tenant's changed name or settings and record it."""
    with tenant_scope(tenant.pk):
        tenant.save(update_fields=fields)
        audit.record(
            "tenant.settings_changed",
            actor=acting,
            target=tenant,
            details={"fields": sorted(fields)},
        )
    return tenant
