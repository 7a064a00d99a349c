"""Read-only lookups of enrollment: devices by id, a device's tenant, status."""

from __future__ import annotations

import uuid

from django.db import connection

from enrollment.operations import FUNCTION


def get_device_tenant(device_id: uuid.UUID) -> uuid.UUID | None:
    """Return the tenant id of a device, or None for an unknown device.

    The one question asked before any tenant is known (a device asking for
    a challenge). It goes through the definer function of
    ``enrollment.operations``, which answers this and nothing more.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {FUNCTION}(%s)", [device_id])
        row = cursor.fetchone()
    value = row[0] if row else None
    if value is None:
        return None
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def members_share_room(
    tenant_id: uuid.UUID, member_a_id: uuid.UUID, member_b_id: uuid.UUID
) -> bool:
    """Return whether two members share a room (asked of the messaging app)."""
    from messaging.rooms import members_share_room as share

    return share(tenant_id, member_a_id, member_b_id)
