"""Units of database work of one relay socket, each in its own tenant scope.

The relay consumer calls each function here through
``database_sync_to_async`` on a pool thread, with a connection from the
pool, so none of them may rely on anything a previous call left on a
connection: each opens ``tenant_scope`` itself, does its work and returns
plain values. The units behind inbound frames (ack, send, ping) re-read the
device, so a revocation, a newer socket of the same device or a deactivated
member is noticed on every frame; ``survey_devices`` re-reads all the
sockets of one process on a timer, one query per tenant.
"""

from __future__ import annotations

import dataclasses
import uuid

from django.db import connection

from agentvault.auth.principal import tenant_of
from agentvault.auth.tokens import TokenError, verify_token
from enrollment.models import Device
from messaging import actions, events
from messaging.errors import RoomNotFoundError
from messaging.serializers import SendRequest
from tenants.scope import tenant_scope

# Close codes of the relay (the table lives in messaging.consumers).
CLOSE_MALFORMED = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_REVOKED = 4403
CLOSE_TOO_SLOW = 4408
CLOSE_REPLACED = 4409
CLOSE_TOO_LARGE = 4413
CLOSE_RATE_LIMITED = 4429


class SocketClosedError(Exception):
    """The socket must close with ``close_code`` (revoked, replaced, ...)."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class SocketIdentity:
    """Who is on the other end of a relay socket, fixed at connect."""

    tenant_id: uuid.UUID
    device_id: uuid.UUID
    member_id: uuid.UUID
    expires_at: int
    epoch: int
    acked_seq: int


# One statement for the whole open: lock the device row (device row before
# queue row, the order revocation locks them), read its status and member,
# and only for an active device of an active member bump the queue's socket
# epoch (creating the queue row on first use). It replaces a principal lookup,
# a locking re-read of the device and the upsert: three round trips.
_OPEN_SQL = """
WITH dev AS (
    SELECT d.id, d.status, m.is_active
      FROM enrollment_device AS d
      JOIN tenants_member AS m ON m.id = d.member_id
     WHERE d.id = %(device)s::uuid AND d.member_id = %(member)s::uuid
       FOR NO KEY UPDATE OF d
), queue AS (
    INSERT INTO messaging_devicequeue
           (device_id, tenant_id, last_seq, acked_seq, depth, connection_epoch)
    SELECT dev.id, %(tenant)s::uuid, 0, 0, 0, 1
      FROM dev
     WHERE dev.status = %(active)s AND dev.is_active
    ON CONFLICT (device_id) DO UPDATE
       SET connection_epoch = messaging_devicequeue.connection_epoch + 1
    RETURNING connection_epoch, acked_seq
)
SELECT dev.status, dev.is_active, queue.connection_epoch, queue.acked_seq
  FROM dev LEFT JOIN queue ON true
"""


def authenticate_socket(token: str) -> SocketIdentity:
    """Verify a device token and open the device's socket epoch.

    Token verification (which may fetch an issuer's key set) runs here, off
    the event loop. Only device tokens may open the relay. The verdicts are
    those of ``resolve_principal`` for a device token (unknown device or
    inactive member 4401, revoked device 4403), then 4403 for a device not
    yet approved, read in one locking statement.
    """
    try:
        verified = verify_token(token)
        if verified.kind != "device":
            raise TokenError("device_required")
        tenant_id = tenant_of(verified)
        device_id = uuid.UUID(verified.subject)
        member_id = uuid.UUID(str(verified.claims["mid"]))
        with tenant_scope(tenant_id), connection.cursor() as cursor:
            cursor.execute(
                _OPEN_SQL,
                {
                    "device": device_id,
                    "member": member_id,
                    "tenant": tenant_id,
                    "active": Device.Status.ACTIVE.value,
                },
            )
            row = cursor.fetchone()
            if row is None:
                raise TokenError("invalid_token")
            status, member_active, epoch, acked = row
            if status == Device.Status.REVOKED:
                raise TokenError("device_revoked")
            if not member_active:
                raise TokenError("invalid_token")
            if status != Device.Status.ACTIVE or epoch is None:
                raise SocketClosedError(CLOSE_REVOKED, "device_not_active")
    except TokenError as exc:
        close = CLOSE_REVOKED if exc.code == "device_revoked" else CLOSE_UNAUTHENTICATED
        raise SocketClosedError(close, exc.code) from None

    return SocketIdentity(
        tenant_id=tenant_id,
        device_id=device_id,
        member_id=member_id,
        expires_at=verified.expires_at,
        epoch=int(epoch),
        acked_seq=int(acked),
    )


_CHECK_SQL = """
SELECT d.status, m.is_active, q.connection_epoch,
       (%s::uuid IS NULL OR EXISTS (
            SELECT 1 FROM messaging_roommembership AS r
             WHERE r.room_id = %s::uuid AND r.member_id = d.member_id))
  FROM messaging_devicequeue AS q
  JOIN enrollment_device AS d ON d.id = q.device_id
  JOIN tenants_member AS m ON m.id = d.member_id
 WHERE q.device_id = %s
"""


def _check(identity: SocketIdentity, *, room_id: uuid.UUID | None = None) -> None:
    """Raise ``SocketClosedError`` unless the socket may stay open.

    With ``room_id``, also raise ``not_found`` unless the device's member is
    in that room (a room of another tenant is invisible, like a missing
    one). Runs inside the caller's tenant scope, as one query.
    """
    with connection.cursor() as cursor:
        cursor.execute(_CHECK_SQL, [room_id, room_id, identity.device_id])
        row = cursor.fetchone()
    if row is None:
        raise SocketClosedError(CLOSE_REVOKED, "device_not_active")
    status, member_active, epoch, in_room = row
    if status != Device.Status.ACTIVE:
        raise SocketClosedError(CLOSE_REVOKED, "device_revoked")
    if not member_active:
        raise SocketClosedError(CLOSE_UNAUTHENTICATED, "member_inactive")
    if epoch > identity.epoch:
        raise SocketClosedError(CLOSE_REPLACED, "replaced")
    if not in_room:
        raise RoomNotFoundError()


def check_socket(identity: SocketIdentity) -> None:
    """Re-check the device on a ``ping``."""
    with tenant_scope(identity.tenant_id):
        _check(identity)


_SURVEY_SQL = """
SELECT q.device_id, d.status, m.is_active, q.connection_epoch, q.last_seq
  FROM messaging_devicequeue AS q
  JOIN enrollment_device AS d ON d.id = q.device_id
  JOIN tenants_member AS m ON m.id = d.member_id
 WHERE q.device_id = ANY(%s::uuid[])
"""


@dataclasses.dataclass(frozen=True)
class DeviceState:
    """One device's row as the per-process survey reads it."""

    active: bool
    member_active: bool
    epoch: int
    last_seq: int

    def close_for(self, identity: SocketIdentity) -> SocketClosedError | None:
        """Return why a socket of ``identity`` must close, or None.

        The same verdicts, in the same order, as the per-frame check.
        """
        if not self.active:
            return SocketClosedError(CLOSE_REVOKED, "device_revoked")
        if not self.member_active:
            return SocketClosedError(CLOSE_UNAUTHENTICATED, "member_inactive")
        if self.epoch > identity.epoch:
            return SocketClosedError(CLOSE_REPLACED, "replaced")
        return None


def survey_devices(
    tenants: dict[uuid.UUID, list[uuid.UUID]],
) -> dict[uuid.UUID, DeviceState]:
    """Read the status and queue head of every listed device, tenant by tenant.

    One query per tenant (in that tenant's scope, which row-level security
    requires), whatever the number of its sockets. A device missing from the
    answer has no queue row the scope can see: treat it as revoked.
    """
    states: dict[uuid.UUID, DeviceState] = {}
    for tenant_id, device_ids in tenants.items():
        with tenant_scope(tenant_id), connection.cursor() as cursor:
            cursor.execute(_SURVEY_SQL, [device_ids])
            rows = cursor.fetchall()
        for device_id, status, member_active, epoch, last_seq in rows:
            states[device_id] = DeviceState(
                active=status == Device.Status.ACTIVE,
                member_active=bool(member_active),
                epoch=int(epoch),
                last_seq=int(last_seq),
            )
    return states


def fetch_for_socket(
    identity: SocketIdentity, *, after: int, limit: int
) -> tuple[list[actions.InboxEntry], bool]:
    """Return up to ``limit`` queued envelopes after ``after``, and whether
    more are queued beyond them.

    No device check is needed here: revocation deletes the device's
    deliveries in the transaction that revokes it, and sends to a revoked
    device are refused, so whatever this reads was committed before any
    revocation. The status is re-checked on every inbound frame and by the
    per-process survey (``survey_devices``).
    """
    with tenant_scope(identity.tenant_id):
        entries = actions.get_inbox(identity.device_id, after=after, limit=limit + 1)
    return entries[:limit], len(entries) > limit


def ack_for_socket(identity: SocketIdentity, up_to_seq: int) -> int:
    """Delete acknowledged deliveries; return the acknowledged mark."""
    with tenant_scope(identity.tenant_id):
        _check(identity)
        acked, _ = actions.do_ack(identity.device_id, up_to_seq, transport="websocket")
    return acked


def send_for_socket(
    identity: SocketIdentity, room_id: uuid.UUID, send: SendRequest
) -> tuple[actions.SendResult, list[events.Outgoing]]:
    """Store a send from the socket's device; return it and the wake-ups.

    The caller has taken the send from the device's rate bucket. The
    wake-ups are collected, not published, so the consumer sends them from
    its event loop once this call (and its transaction) has returned.
    """
    with events.collect_events() as outgoing:
        with tenant_scope(identity.tenant_id):
            _check(identity, room_id=room_id)
            sender = Device(
                pk=identity.device_id,
                member_id=identity.member_id,
                tenant_id=identity.tenant_id,
            )
            result = actions.do_send_message(
                room_id,
                tenant_id=identity.tenant_id,
                sender=sender,
                client_message_id=send.client_message_id,
                envelopes=send.envelopes,
                savepoint=False,
                transport="websocket",
            )
    return result, list(outgoing)
