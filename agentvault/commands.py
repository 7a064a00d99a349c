"""Helpers shared by operator commands: resolving ``--tenant`` cleanly."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import CommandError

from tenants.models import Tenant


def resolve_tenant(value: str) -> Tenant:
    """Return the tenant named by id or slug, or raise a clear ``CommandError``."""
    lookup: dict[str, Any]
    try:
        lookup = {"pk": uuid.UUID(value)}
    except ValueError:
        lookup = {"slug": value}
    tenant = Tenant.objects.filter(**lookup).first()
    if tenant is None:
        raise CommandError(f"No tenant {value!r}: give a tenant id or slug.")
    return tenant
