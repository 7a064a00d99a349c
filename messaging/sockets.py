"""Units of database work of one relay socket, each in its own tenant scope.

Opening, sending, acknowledging and checking are each one statement on the
relay pool (``messaging.store``): a SQL function that enters the socket's
tenant first, in its own autocommit transaction, so none may rely on
anything a previous call left on a connection. The units behind inbound
frames (ack, send, ping) re-read the device, so a revocation, a newer socket
of the same device or a deactivated member is noticed on every frame;
``survey_devices`` re-reads all the sockets of one process on a timer, one
query per tenant, through Django on a pool thread.
"""

from __future__ import annotations

import dataclasses
import uuid

from asgiref.sync import sync_to_async
from django.db import connection

from agentvault.auth.principal import tenant_of
from agentvault.auth.tokens import TokenError, verify_token
from enrollment.models import Device
from messaging import actions, store
from messaging.conf import messaging_settings
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
CLOSE_UNAVAILABLE = 4503


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


_STATE_CLOSES = {
    "device_not_active": CLOSE_REVOKED,
    "device_revoked": CLOSE_REVOKED,
    "member_inactive": CLOSE_UNAUTHENTICATED,
    "replaced": CLOSE_REPLACED,
}


def closed_for(error: store.DeviceStateError) -> SocketClosedError:
    """Return the close that a device-state refusal means for its socket."""
    return SocketClosedError(
        _STATE_CLOSES.get(error.outcome, CLOSE_REVOKED), error.outcome
    )


async def open_socket(token: str, channel: str) -> tuple[SocketIdentity, str]:
    """Verify a device token and open the device's socket epoch.

    Return the socket's identity and the wake-up channel recorded for the
    device before (the process of its previous socket, or "").

    Token verification (which may fetch an issuer's key set) runs on a
    thread, off the event loop. Only device tokens may open the relay. The
    verdicts are those of ``resolve_principal`` for a device token (unknown
    device or inactive member 4401, revoked device 4403), then 4403 for a
    device not yet approved, read in one locking statement that also bumps
    the socket epoch and records ``channel``, the wake-up channel of this
    process (``messaging_open_socket``).
    """
    try:
        verified = await sync_to_async(verify_token, thread_sensitive=False)(token)
        if verified.kind != "device":
            raise TokenError("device_required")
        tenant_id = tenant_of(verified)
        device_id = uuid.UUID(verified.subject)
        member_id = uuid.UUID(str(verified.claims["mid"]))
        status, member_active, epoch, acked, previous = await store.aopen(
            tenant_id, device_id, member_id, channel
        )
        if status is None:
            raise TokenError("invalid_token")
        if status == Device.Status.REVOKED:
            raise TokenError("device_revoked")
        if not member_active:
            raise TokenError("invalid_token")
        if status != Device.Status.ACTIVE or epoch is None:
            raise SocketClosedError(CLOSE_REVOKED, "device_not_active")
    except TokenError as exc:
        close = CLOSE_REVOKED if exc.code == "device_revoked" else CLOSE_UNAUTHENTICATED
        raise SocketClosedError(close, exc.code) from None

    identity = SocketIdentity(
        tenant_id=tenant_id,
        device_id=device_id,
        member_id=member_id,
        expires_at=verified.expires_at,
        epoch=int(epoch),
        acked_seq=int(acked or 0),
    )
    return identity, previous or ""


async def check_socket(identity: SocketIdentity) -> None:
    """Raise ``SocketClosedError`` unless the socket may stay open."""
    try:
        await store.astate(identity.tenant_id, identity.device_id, identity.epoch)
    except store.DeviceStateError as exc:
        raise closed_for(exc) from None


async def ack_for_socket(identity: SocketIdentity, up_to_seq: int) -> int:
    """Check the device, delete acknowledged deliveries; return the mark."""
    try:
        acked, deleted = await store.aack(
            identity.tenant_id, identity.device_id, identity.epoch, up_to_seq
        )
    except store.DeviceStateError as exc:
        raise closed_for(exc) from None
    actions.count_ack("websocket", deleted)
    return acked


async def send_for_socket(
    identity: SocketIdentity, room_id: uuid.UUID, send: SendRequest
) -> tuple[store.SendResult, list[store.Queued]]:
    """Store a send from the socket's device; return it and its deliveries.

    The caller has taken the send from the device's rate bucket, and wakes
    the recipients once this returns (the statement has committed).
    """
    try:
        result, queued = await store.asend(
            tenant_id=identity.tenant_id,
            device_id=identity.device_id,
            member_id=identity.member_id,
            epoch=identity.epoch,
            room_id=room_id,
            client_message_id=send.client_message_id,
            envelopes=send.envelopes,
            queue_cap=int(messaging_settings.QUEUE_CAP),
        )
    except store.DeviceStateError as exc:
        raise closed_for(exc) from None
    if result.created:
        actions.count_stored("websocket", queued)
    return result, queued


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
