"""Shared parts of the enrollment operator commands."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError

from enrollment.models import Device

#: How operator commands appear in the audit trail.
OPERATOR = ("operator", "manage.py")


def load_device(tenant_id: uuid.UUID, value: str) -> Device:
    """Return a device of the current tenant scope, or a clear error."""
    try:
        device_id = uuid.UUID(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a device id (a UUID).") from None
    device = (
        Device.objects.select_related("member")
        .filter(pk=device_id, tenant_id=tenant_id)
        .first()
    )
    if device is None:
        raise CommandError(f"No device {value} in this tenant.")
    return device
