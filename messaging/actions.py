"""Every write of the messaging app: rooms, membership, sends, acks, purges.

Each function runs inside the caller's tenant scope (the request middleware
or a command's per-tenant scope) and either opens its own
``transaction.atomic`` block, a savepoint there, or is one statement (a
send, a read, an acknowledgement: the SQL functions of ``messaging.store``,
which apply every refusal before they write), so a refusal stores nothing.
Channel-layer events go out only after commit.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection, transaction

import audit
from agentvault.observability import metrics
from enrollment.models import Device
from messaging import events, ratelimit, store
from messaging.conf import messaging_settings
from messaging.errors import (
    MemberNotFoundError,
    RoomNotFoundError,
    SendRateLimitedError,
)
from messaging.models import Delivery, DeviceQueue, Message, Room, RoomMembership
from messaging.store import Envelope, InboxEntry, SendResult
from tenants.models import Member

logger = logging.getLogger(__name__)


# --- Rooms and membership ------------------------------------------------------


def access_room(room_id: uuid.UUID | str, *, member: Member) -> Room:
    """Return the room if ``member`` may see it, else raise ``not_found``.

    - Admins see every room of their tenant; everyone else (agents included)
      only the rooms they belong to.
    - Row-level security already hides other tenants' rooms, so their rooms
      and missing ones get the same answer.
    """
    try:
        room_uuid = uuid.UUID(str(room_id))
    except ValueError:
        raise RoomNotFoundError() from None
    rooms = Room.objects.filter(pk=room_uuid)
    if not member.is_admin:
        rooms = rooms.filter(memberships__member=member)
    room = rooms.first()
    if room is None:
        raise RoomNotFoundError()
    return room


def access_member(member_id: uuid.UUID | str) -> Member:
    """Return an active member of the current tenant, else raise ``not_found``."""
    try:
        member_uuid = uuid.UUID(str(member_id))
    except ValueError:
        raise MemberNotFoundError() from None
    member = Member.objects.active().filter(pk=member_uuid).first()
    if member is None:
        raise MemberNotFoundError()
    return member


def get_rooms(*, member: Member) -> list[Room]:
    """Return the rooms ``member`` may see, with their member ids prefetched."""
    rooms = Room.objects.all()
    if not member.is_admin:
        rooms = rooms.filter(memberships__member=member)
    return list(rooms.prefetch_related("memberships"))


def get_room_devices(room: Room) -> list[Device]:
    """Return the active devices of the room's members."""
    return list(
        Device.objects.active()
        .filter(member__room_memberships__room=room)
        .order_by("member_id", "created_at", "id")
    )


def _room_device_ids(room_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        Device.objects.active()
        .filter(member__room_memberships__room_id=room_id)
        .values_list("pk", flat=True)
    )


def _notify_room_devices(room_id: uuid.UUID, *, also: Iterable[uuid.UUID] = ()) -> None:
    targets = set(_room_device_ids(room_id)) | set(also)
    events.publish_on_commit(events.devices_changed(room_id, targets))


def do_create_room(
    name: str,
    *,
    tenant_id: uuid.UUID,
    members: Sequence[Member] = (),
    acting: Any = None,
) -> Room:
    """Create a room in the current tenant, with its first members."""
    with transaction.atomic():
        room = Room.objects.create(tenant_id=tenant_id, name=name)
        for member in dict.fromkeys(members):
            RoomMembership.objects.create(tenant_id=tenant_id, room=room, member=member)

        audit.record(
            "room.created",
            actor=acting,
            target=room,
            details={"members": [str(member.pk) for member in members]},
        )
        _notify_room_devices(room.pk)

    logger.info("Created room %s with %d members", room.pk, len(members))
    return room


def do_add_room_member(room: Room, member: Member, *, acting: Any = None) -> bool:
    """Add ``member`` to ``room``; return False if it was already there."""
    with transaction.atomic():
        _, created = RoomMembership.objects.get_or_create(
            room=room, member=member, defaults={"tenant_id": room.tenant_id}
        )
        if not created:
            return False

        audit.record(
            "room.member_added",
            actor=acting,
            target=room,
            details={"member": str(member.pk)},
        )
        _notify_room_devices(room.pk)

    logger.info("Added member %s to room %s", member.pk, room.pk)
    return True


def do_remove_room_member(room: Room, member: Member, *, acting: Any = None) -> bool:
    """Remove ``member`` from ``room``; return False if it was not there."""
    with transaction.atomic():
        removed_devices = list(
            Device.objects.active().filter(member=member).values_list("pk", flat=True)
        )
        deleted, _ = RoomMembership.objects.filter(room=room, member=member).delete()
        if not deleted:
            return False

        audit.record(
            "room.member_removed",
            actor=acting,
            target=room,
            details={"member": str(member.pk)},
        )
        _notify_room_devices(room.pk, also=removed_devices)

    logger.info("Removed member %s from room %s", member.pk, room.pk)
    return True


# --- Sending -------------------------------------------------------------------


def check_send_rate(device_id: uuid.UUID) -> None:
    """Take one send from the device's bucket or raise ``rate_limited``."""
    _refuse_send_after(ratelimit.take("send", device_id.hex, **_send_rate()))


async def acheck_send_rate(allowance: ratelimit.Allowance) -> None:
    """``check_send_rate`` on the event loop, for one relay socket."""
    _refuse_send_after(await allowance.take(**_send_rate()))


def send_allowance(device_id: uuid.UUID) -> ratelimit.Allowance:
    """Return a socket's allowance of its device's send budget."""
    return ratelimit.Allowance("send", device_id.hex)


def _send_rate() -> dict[str, Any]:
    return {
        "rate": float(messaging_settings.SEND_RATE),
        "burst": int(messaging_settings.SEND_BURST),
    }


def _refuse_send_after(wait: float) -> None:
    if wait > 0:
        metrics.RATE_LIMITED.labels("send").inc()
        raise SendRateLimitedError(retry_after=wait)


def do_send_message(
    room_id: uuid.UUID,
    *,
    tenant_id: uuid.UUID,
    sender: Device,
    client_message_id: str,
    envelopes: Sequence[Envelope],
    transport: str = "rest",
) -> SendResult:
    """Store a message and one delivery per recipient device, atomically.

    One call of ``messaging_send`` (the rules are in ``messaging.store``):
    each delivery takes the next gap-free sequence number of its device, a
    repeat of the same ``client_message_id`` from the same device returns
    the first result and stores nothing, a refusal stores nothing. The
    wake-ups go out after commit.
    """
    try:
        result, queued = store.send(
            tenant_id=tenant_id,
            device_id=sender.pk,
            member_id=sender.member_id,
            epoch=None,
            room_id=room_id,
            client_message_id=client_message_id,
            envelopes=envelopes,
            queue_cap=int(messaging_settings.QUEUE_CAP),
        )
    except store.DeviceStateError as exc:
        raise exc.as_api_error() from None
    if result.created:
        events.publish_on_commit(events.wakes(queued))
        transaction.on_commit(lambda: count_stored(transport, queued))
        logger.debug("Stored message %s for %d devices", result.message_id, len(queued))
    return result


def count_stored(transport: str, queued: Sequence[store.Queued]) -> None:
    """Count a stored message, its envelopes and its recipients' queue depths."""
    metrics.MESSAGES_STORED.labels(transport).inc()
    metrics.ENVELOPES_STORED.inc(len(queued))
    for entry in queued:
        metrics.QUEUE_DEPTH.observe(entry.depth)


# --- Inbox and acknowledgement ---------------------------------------------------


def get_inbox(
    device_id: uuid.UUID, *, tenant_id: uuid.UUID, after: int, limit: int
) -> list[InboxEntry]:
    """Return up to ``limit`` queued envelopes of the device after ``after``."""
    return store.inbox(tenant_id, device_id, after=after, limit=limit)


def get_acked_seq(device_id: uuid.UUID) -> int:
    """Return the highest sequence number the device has acknowledged."""
    acked = (
        DeviceQueue.objects.filter(device_id=device_id)
        .values_list("acked_seq", flat=True)
        .first()
    )
    return int(acked or 0)


def do_ack(
    device_id: uuid.UUID,
    up_to_seq: int,
    *,
    tenant_id: uuid.UUID,
    transport: str = "rest",
) -> tuple[int, int]:
    """Delete the device's deliveries up to ``up_to_seq``; return (acked, deleted).

    Acknowledging past the last sequence number is clamped to it, so the
    acknowledged mark never runs ahead of what was sent.
    """
    acked, deleted = store.ack(tenant_id, device_id, up_to_seq)
    count_ack(transport, deleted)
    return acked, deleted


def count_ack(transport: str, deleted: int) -> None:
    """Count one acknowledgement and the envelopes it deleted."""
    metrics.ACKS.labels(transport).inc()
    metrics.ENVELOPES_ACKED.inc(deleted)


# --- Revocation and retention ------------------------------------------------------

_PURGE_QUEUE_SQL = """
INSERT INTO messaging_devicequeue
       (device_id, tenant_id, last_seq, acked_seq, depth, connection_epoch)
VALUES (%s, %s, 0, 0, 0, 0)
ON CONFLICT (device_id) DO UPDATE SET depth = 0
"""


def do_purge_device_queue(device: Device) -> int:
    """Delete every queued delivery of ``device``; return how many.

    Locks (or creates) the device's queue row first, so a send still in
    flight either finishes before the purge and is purged, or sees the
    revocation and is refused.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_PURGE_QUEUE_SQL, [device.pk, device.tenant_id])
        deleted, _ = Delivery.objects.filter(device_id=device.pk).delete()
    logger.info("Purged %d queued deliveries of device %s", deleted, device.pk)
    return deleted


def get_peer_device_ids(member_id: uuid.UUID) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Return (room id, device id) of active devices sharing a room with a member."""
    rooms = RoomMembership.objects.filter(member_id=member_id).values("room_id")
    return list(
        Device.objects.active()
        .filter(member__room_memberships__room_id__in=rooms)
        .values_list("member__room_memberships__room_id", "pk")
        .distinct()
    )


_LOCK_PRUNED_QUEUES_SQL = """
SELECT device_id FROM messaging_devicequeue
 WHERE device_id IN (SELECT DISTINCT device_id FROM messaging_delivery
                      WHERE created_at < %s)
 ORDER BY device_id FOR UPDATE
"""

_PRUNE_SQL = """
WITH gone AS (
    DELETE FROM messaging_delivery WHERE created_at < %s RETURNING device_id
), counts AS (
    SELECT device_id, count(*) AS n FROM gone GROUP BY device_id
)
UPDATE messaging_devicequeue AS q
   SET depth = GREATEST(q.depth - counts.n, 0)
  FROM counts
 WHERE q.device_id = counts.device_id
RETURNING counts.n
"""


def do_prune_deliveries(*, older_than: datetime.datetime) -> tuple[int, int]:
    """Delete deliveries and finished messages created before ``older_than``.

    Returns (deliveries deleted, messages deleted). A message row is kept
    while any delivery of it is queued, and for the retention period in any
    case, because it answers repeats of its ``client_message_id``.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Queue rows in id order, as senders lock them.
            cursor.execute(_LOCK_PRUNED_QUEUES_SQL, [older_than])
            cursor.execute(_PRUNE_SQL, [older_than])
            deliveries = sum(int(row[0]) for row in cursor.fetchall())
        messages, _ = (
            Message.objects.filter(created_at__lt=older_than, deliveries__isnull=True)
            .distinct()
            .delete()
        )
    return deliveries, messages
