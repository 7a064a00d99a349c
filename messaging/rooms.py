"""Read-only questions about rooms, asked inside the caller's tenant scope."""

from __future__ import annotations

import uuid

from messaging.models import RoomMembership


def members_share_room(
    tenant_id: uuid.UUID | str,
    member_a_id: uuid.UUID | str,
    member_b_id: uuid.UUID | str,
) -> bool:
    """Return whether two members of ``tenant_id`` have a room in common.

    Run inside the caller's tenant scope: row-level security already limits
    the rows to that tenant, and the explicit tenant filter keeps the answer
    right for a caller holding a connection that bypasses it.
    """
    rooms_of_a = RoomMembership.objects.filter(
        tenant_id=tenant_id, member_id=member_a_id
    ).values("room_id")
    return RoomMembership.objects.filter(
        tenant_id=tenant_id, member_id=member_b_id, room_id__in=rooms_of_a
    ).exists()
