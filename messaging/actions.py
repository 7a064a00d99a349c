"""Every write of the messaging app: rooms, membership, sends, acks, purges.

Each function runs inside the caller's tenant scope (the request middleware,
a consumer's database call, or a command's per-tenant scope) and opens its
own ``transaction.atomic`` block, a savepoint there, so a refusal stores
nothing. Channel-layer events go out only after commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

import audit
from agentvault.observability import metrics
from enrollment.models import Device
from messaging import events, ratelimit
from messaging.conf import messaging_settings
from messaging.errors import (
    DeviceMismatchError,
    DuplicateDeviceError,
    MemberNotFoundError,
    RecipientQueueFullError,
    RoomNotFoundError,
    SendRateLimitedError,
    StaleDevicesError,
)
from messaging.models import Delivery, DeviceQueue, Message, Room, RoomMembership
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
    events.publish_on_commit(
        [events.devices_changed(device_id, room_id) for device_id in sorted(targets)]
    )


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


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One ciphertext for one recipient device."""

    device_id: uuid.UUID
    ciphertext: bytes


@dataclasses.dataclass(frozen=True)
class SendResult:
    """The outcome of a send; ``created`` is False for an idempotent repeat."""

    message_id: uuid.UUID
    server_ts: datetime.datetime
    created: bool


def check_send_rate(device_id: uuid.UUID) -> None:
    """Take one send from the device's bucket or raise ``rate_limited``."""
    wait = ratelimit.take(
        "send",
        device_id.hex,
        rate=float(messaging_settings.SEND_RATE),
        burst=int(messaging_settings.SEND_BURST),
    )
    if wait > 0:
        metrics.RATE_LIMITED.labels("send").inc()
        raise SendRateLimitedError(retry_after=wait)


def _previous_send(device_id: uuid.UUID, client_message_id: str) -> SendResult | None:
    found = (
        Message.objects.filter(
            sender_device_id=device_id, client_message_id=client_message_id
        )
        .values_list("pk", "created_at")
        .first()
    )
    if found is None:
        return None
    return SendResult(message_id=found[0], server_ts=found[1], created=False)


def _stale(device_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    return sorted(
        Device.objects.filter(
            pk__in=list(device_ids), status=Device.Status.REVOKED
        ).values_list("pk", flat=True)
    )


def _check_recipients(
    room_id: uuid.UUID, sender_device_id: uuid.UUID, envelopes: Sequence[Envelope]
) -> None:
    """Refuse unless the envelopes name each expected device exactly once.

    - Expected: every active device of every room member, minus the sender.
    - Revoked devices are reported as stale (410) before any mismatch (409),
      so the client refreshes its list once.
    - A device of another tenant is invisible here, so it is reported as
      ``extra`` exactly like an id that does not exist.
    """
    named = [envelope.device_id for envelope in envelopes]
    if len(set(named)) != len(named):
        raise DuplicateDeviceError()

    # Lock the recipients' device rows, in id order, before their queue rows:
    # a revocation locks the device row first too, so the two queue up
    # instead of deadlocking on the deliveries' deferred foreign-key checks,
    # and a send waiting here re-reads the device after the revocation.
    expected = set(
        Device.objects.active()
        .filter(member__room_memberships__room_id=room_id)
        .exclude(pk=sender_device_id)
        .order_by("pk")
        .select_for_update(no_key=True, of=("self",))
        .values_list("pk", flat=True)
    )
    given = set(named)
    if given == expected:
        return

    stale = _stale(given - expected)
    if stale:
        raise StaleDevicesError(fields={"stale": [str(d) for d in stale]})
    raise DeviceMismatchError(
        fields={
            "missing": sorted(str(d) for d in expected - given),
            "extra": sorted(str(d) for d in given - expected),
        }
    )


_ENQUEUE_SQL = """
WITH locked AS (
    SELECT device_id FROM messaging_devicequeue
     WHERE device_id = ANY(%s::uuid[]) ORDER BY device_id FOR UPDATE
), advanced AS (
    UPDATE messaging_devicequeue AS q
       SET last_seq = q.last_seq + 1, depth = q.depth + 1
      FROM locked
     WHERE q.device_id = locked.device_id
    RETURNING q.device_id, q.last_seq, q.depth
), stored AS (
    INSERT INTO messaging_delivery
           (tenant_id, device_id, seq, message_id, room_id, sender_device_id,
            sender_member_id, ciphertext, created_at)
    SELECT %s, a.device_id, a.last_seq, %s, %s, %s, %s, e.ciphertext, %s
      FROM advanced AS a
      JOIN unnest(%s::uuid[], %s::bytea[]) AS e(device_id, ciphertext)
        ON e.device_id = a.device_id
    RETURNING device_id
)
SELECT device_id, last_seq, depth FROM advanced
"""

_CREATE_QUEUES_SQL = """
INSERT INTO messaging_devicequeue
       (device_id, tenant_id, last_seq, acked_seq, depth, connection_epoch)
SELECT d, %s, 0, 0, 0, 0 FROM unnest(%s::uuid[]) AS d ORDER BY d
ON CONFLICT (device_id) DO NOTHING
"""


@dataclasses.dataclass(frozen=True)
class _Stamp:
    """What every delivery of one message shares."""

    tenant_id: uuid.UUID
    message_id: uuid.UUID
    room_id: uuid.UUID
    sender_device_id: uuid.UUID
    sender_member_id: uuid.UUID
    created_at: datetime.datetime


def _enqueue(stamp: _Stamp, envelopes: Sequence[Envelope]) -> dict[uuid.UUID, int]:
    """Queue each envelope at its device's next sequence number, in one statement.

    Returns device -> seq. Queue rows are locked in device-id order, so
    concurrent senders to overlapping devices queue up instead of
    deadlocking; a device without a queue row gets one first. A queue over
    its cap raises ``recipient_queue_full`` (the caller's savepoint undoes it).
    """
    pending = sorted(envelopes, key=lambda envelope: envelope.device_id)
    rows: list[tuple[uuid.UUID, int, int]] = []
    with connection.cursor() as cursor:
        for attempt in range(2):
            devices = [envelope.device_id for envelope in pending]
            cursor.execute(
                _ENQUEUE_SQL,
                [
                    devices,
                    stamp.tenant_id,
                    stamp.message_id,
                    stamp.room_id,
                    stamp.sender_device_id,
                    stamp.sender_member_id,
                    stamp.created_at,
                    devices,
                    [envelope.ciphertext for envelope in pending],
                ],
            )
            rows += cursor.fetchall()
            done = {row[0] for row in rows}
            pending = [e for e in pending if e.device_id not in done]
            if not pending or attempt:
                break
            missing = [envelope.device_id for envelope in pending]
            cursor.execute(_CREATE_QUEUES_SQL, [stamp.tenant_id, missing])
    assert not pending, "queue rows missing after creation"

    cap = int(messaging_settings.QUEUE_CAP)
    full = sorted(str(device) for device, _, depth in rows if depth > cap)
    if full:
        metrics.QUEUE_FULL.inc()
        raise RecipientQueueFullError(fields={"devices": full})
    depths = [depth for _, _, depth in rows]
    transaction.on_commit(lambda: _observe_depths(depths))
    return {device: seq for device, seq, _ in rows}


_INSERT_MESSAGE_SQL = """
INSERT INTO messaging_message
       (id, tenant_id, room_id, sender_device_id, sender_member_id,
        client_message_id, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (sender_device_id, client_message_id) DO NOTHING
RETURNING id
"""


def do_send_message(
    room_id: uuid.UUID,
    *,
    tenant_id: uuid.UUID,
    sender: Device,
    client_message_id: str,
    envelopes: Sequence[Envelope],
    savepoint: bool = True,
    transport: str = "rest",
) -> SendResult:
    """Store a message and one delivery per recipient device, atomically.

    The caller has checked that ``sender`` is active and a member of the
    room (only its ``pk`` and ``member_id`` are used). Each delivery takes
    the next gap-free sequence number of its device; the wake-ups go out
    after commit. A repeat of the same ``client_message_id`` from the same
    device returns the first result and stores nothing. ``savepoint=False``
    saves two round trips for a caller whose own transaction ends with this
    send (a refusal then rolls the whole transaction back).
    """
    with transaction.atomic(savepoint=savepoint):
        # The message row first: a repeat of the client id conflicts on the
        # unique index (waiting for a concurrent first attempt to finish) and
        # answers with the first result, whatever the room holds now.
        now = timezone.now()
        message_id = uuid.uuid4()
        with connection.cursor() as cursor:
            cursor.execute(
                _INSERT_MESSAGE_SQL,
                [
                    message_id,
                    tenant_id,
                    room_id,
                    sender.pk,
                    sender.member_id,
                    client_message_id,
                    now,
                ],
            )
            inserted = cursor.fetchone()
        if inserted is None:
            previous = _previous_send(sender.pk, client_message_id)
            assert previous is not None
            return previous

        # Locks the recipients' device rows: a revocation either committed
        # before (the device is refused as stale) or waits for this send and
        # then purges what it stored. A refusal rolls the message back too.
        _check_recipients(room_id, sender.pk, envelopes)

        stamp = _Stamp(tenant_id, message_id, room_id, sender.pk, sender.member_id, now)
        sequence = _enqueue(stamp, envelopes) if envelopes else {}
        events.publish_on_commit(
            [events.wake(device, seq) for device, seq in sorted(sequence.items())]
        )
        transaction.on_commit(lambda: _count_stored(transport, envelopes=len(sequence)))

    logger.debug("Stored message %s for %d devices", message_id, len(envelopes))
    return SendResult(message_id=message_id, server_ts=now, created=True)


def _observe_depths(depths: list[int]) -> None:
    for depth in depths:
        metrics.QUEUE_DEPTH.observe(depth)


def _count_stored(transport: str, *, envelopes: int) -> None:
    metrics.MESSAGES_STORED.labels(transport).inc()
    metrics.ENVELOPES_STORED.inc(envelopes)


# --- Inbox and acknowledgement ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InboxEntry:
    """One queued envelope as the inbox and the relay present it."""

    seq: int
    message_id: uuid.UUID
    room_id: uuid.UUID
    sender_device_id: uuid.UUID
    sender_member_id: uuid.UUID
    ciphertext: bytes
    server_ts: datetime.datetime


_INBOX_SQL = """
SELECT seq, message_id, room_id, sender_device_id, sender_member_id,
       ciphertext, created_at
  FROM messaging_delivery
 WHERE device_id = %s AND seq > %s
 ORDER BY seq
 LIMIT %s
"""


def get_inbox(device_id: uuid.UUID, *, after: int, limit: int) -> list[InboxEntry]:
    """Return up to ``limit`` queued envelopes of the device after ``after``."""
    with connection.cursor() as cursor:
        cursor.execute(_INBOX_SQL, [device_id, after, limit])
        rows = cursor.fetchall()
    return [
        InboxEntry(seq, mid, room, sdev, smem, bytes(ciphertext), ts)
        for seq, mid, room, sdev, smem, ciphertext, ts in rows
    ]


def get_acked_seq(device_id: uuid.UUID) -> int:
    """Return the highest sequence number the device has acknowledged."""
    acked = (
        DeviceQueue.objects.filter(device_id=device_id)
        .values_list("acked_seq", flat=True)
        .first()
    )
    return int(acked or 0)


_ACK_SQL = """
WITH gone AS (
    DELETE FROM messaging_delivery WHERE device_id = %s AND seq <= %s
    RETURNING 1
)
UPDATE messaging_devicequeue
   SET depth = GREATEST(depth - (SELECT count(*) FROM gone), 0),
       acked_seq = GREATEST(acked_seq, LEAST(%s, last_seq))
 WHERE device_id = %s
RETURNING acked_seq, (SELECT count(*) FROM gone)
"""


def do_ack(
    device_id: uuid.UUID, up_to_seq: int, *, transport: str = "rest"
) -> tuple[int, int]:
    """Delete the device's deliveries up to ``up_to_seq``; return (acked, deleted).

    Acknowledging past the last sequence number is clamped to it, so the
    acknowledged mark never runs ahead of what was sent.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_ACK_SQL, [device_id, up_to_seq, up_to_seq, device_id])
        row = cursor.fetchone()
    metrics.ACKS.labels(transport).inc()
    if row is None:
        return 0, 0
    metrics.ENVELOPES_ACKED.inc(int(row[1]))
    return int(row[0]), int(row[1])


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
