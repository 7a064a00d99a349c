"""The relay's statements on the queues, one round trip each.

Sending, reading a queue, acknowledging and opening a socket are SQL
functions (``messaging/migrations/0004_relay_functions.py``). Each takes the
tenant first and enters it before anything else, so one call in autocommit
mode is a whole tenant scope in one statement; inside a request transaction,
whose tenant is already set, it is one statement of that transaction. A
relayed message used to cost about fifteen round trips (begin, set the
tenant, checks, locks, inserts, commit, the pool's reset); now it costs two
calls, the send and the read.

The REST views call the synchronous functions below through Django's
connection; the relay consumer calls the ``a``-prefixed ones on its event
loop, through an asyncio psycopg pool of autocommit connections (one pool
per event loop, ``relay_pool``), so no relay statement waits for a thread.
Both paths share the statement texts and the mapping of outcomes to errors.

The send rules, in the order the function applies them (a refusal returns
before anything is written):

1. the device rows of the sender and of the room's active devices are
   locked in id order (revocation locks the device row first too, so a
   revocation of the sender or a recipient commits before the checks below
   or waits for the send);
2. the sender's device is active, its member active, its socket not
   replaced, and its member in the room (else ``room_not_found``);
3. a repeat of its ``client_message_id`` answers with the first result;
4. the recipients must be exactly the room's other active devices: revoked
   ones are ``stale`` (410), otherwise ``device_mismatch`` (409) names the
   missing and extra ones;
5. the recipients' queue rows are locked in id order and none may be at the
   cap (``recipient_queue_full``);
6. the message row (its unique index catches a concurrent repeat), then one
   delivery per device at the device's next gap-free sequence number.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from django.db import connection, connections

from agentvault.errors import AuthenticationError
from agentvault.observability import metrics
from messaging.errors import (
    DeviceMismatchError,
    DuplicateDeviceError,
    RecipientQueueFullError,
    RoomNotFoundError,
    StaleDevicesError,
)
from messaging.loops import Gatherer, PerLoop

SEND_SQL = (
    "SELECT * FROM messaging_send(%s, %s, %s, %s, %s, %s, %s, %s,"
    " %s::uuid[], %s::bytea[], %s)"
)
INBOX_SQL = "SELECT * FROM messaging_inbox(%s, %s::uuid[], %s::bigint[], %s)"
ACK_SQL = "SELECT * FROM messaging_ack(%s, %s, %s, %s)"
STATE_SQL = "SELECT messaging_device_state(%s, %s, %s, NULL)"
OPEN_SQL = "SELECT * FROM messaging_open_socket(%s, %s, %s, %s)"


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One ciphertext for one recipient device."""

    device_id: uuid.UUID
    ciphertext: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class SendResult:
    """The outcome of a send; ``created`` is False for an idempotent repeat."""

    message_id: uuid.UUID
    server_ts: datetime.datetime
    created: bool


@dataclasses.dataclass(frozen=True)
class Queued:
    """One delivery a send stored, and where to wake its device."""

    device_id: uuid.UUID
    seq: int
    depth: int
    channel: str


@dataclasses.dataclass(frozen=True)
class InboxEntry:
    """One queued envelope as the inbox and the relay present it."""

    seq: int
    message_id: uuid.UUID
    room_id: uuid.UUID
    sender_device_id: uuid.UUID
    sender_member_id: uuid.UUID
    ciphertext: bytes = dataclasses.field(repr=False)
    server_ts: datetime.datetime


class DeviceStateError(Exception):
    """The acting device may not act: revoked, replaced, member inactive."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome

    def as_api_error(self) -> AuthenticationError:
        """The REST answer: the device's credentials no longer hold."""
        return AuthenticationError(code="invalid_token")


# --- Sending ------------------------------------------------------------------


def send_params(
    *,
    tenant_id: uuid.UUID,
    device_id: uuid.UUID,
    member_id: uuid.UUID,
    epoch: int | None,
    room_id: uuid.UUID,
    client_message_id: str,
    envelopes: Sequence[Envelope],
    queue_cap: int,
) -> list[Any]:
    """Return the arguments of ``messaging_send`` (duplicates refused here)."""
    named = [envelope.device_id for envelope in envelopes]
    if len(set(named)) != len(named):
        raise DuplicateDeviceError()
    return [
        tenant_id,
        device_id,
        member_id,
        epoch,
        room_id,
        client_message_id,
        uuid.uuid4(),
        datetime.datetime.now(tz=datetime.UTC),
        named,
        [envelope.ciphertext for envelope in envelopes],
        queue_cap,
    ]


def _ids(values: Sequence[uuid.UUID] | None) -> list[str]:
    return sorted(str(value) for value in values or ())


def send_outcome(row: Sequence[Any]) -> tuple[SendResult, list[Queued]]:
    """Map a ``messaging_send`` row to its result and deliveries, or raise."""
    outcome, message_id, created_at, devices, seqs, depths, channels = row[:7]
    missing, extra = row[7:9]
    if outcome == "stored":
        queued = [
            Queued(device, int(seq), int(depth), channel or "")
            for device, seq, depth, channel in zip(
                devices, seqs, depths, channels, strict=True
            )
        ]
        return SendResult(message_id, created_at, created=True), queued
    if outcome == "repeat":
        return SendResult(message_id, created_at, created=False), []
    if outcome == "stale":
        raise StaleDevicesError(fields={"stale": _ids(devices)})
    if outcome == "mismatch":
        raise DeviceMismatchError(
            fields={"missing": _ids(missing), "extra": _ids(extra)}
        )
    if outcome == "queue_full":
        metrics.QUEUE_FULL.inc()
        raise RecipientQueueFullError(fields={"devices": _ids(devices)})
    if outcome == "room_not_found":
        raise RoomNotFoundError()
    raise DeviceStateError(outcome)


def send(**kwargs: Any) -> tuple[SendResult, list[Queued]]:
    """Store a send through Django's connection (see ``send_params``)."""
    with connection.cursor() as cursor:
        cursor.execute(SEND_SQL, send_params(**kwargs))
        row = cursor.fetchone()
    return send_outcome(row)


async def asend(**kwargs: Any) -> tuple[SendResult, list[Queued]]:
    """Store a send through the relay pool (see ``send_params``).

    Sends made on one event loop go to PostgreSQL together, one
    ``messaging_send_batch`` statement per tenant for those of one turn, or
    of the time the tenant's previous statement was out (``_SendBatcher``).
    """
    params = send_params(**kwargs)
    row = await _batcher().submit(params)
    if row[0] == "retry":
        # Its subtransaction met a lock conflict: alone, it simply waits.
        row = await _fetchone(SEND_SQL, params)
    return send_outcome(row)


SEND_BATCH_SQL = (
    "SELECT * FROM messaging_send_batch(%s, %s, %s, %s::uuid[], %s::uuid[],"
    " %s::bigint[], %s::uuid[], %s::text[], %s::uuid[], %s::int[], %s::int[],"
    " %s::uuid[], %s::bytea[])"
)
# Bounds of one batch statement, and how many may be out per tenant and loop.
BATCH_SENDS = 16
BATCH_BYTES = 4 * 1024 * 1024
SEND_STATEMENTS = 1
# Where a batched send's row arrives.
_Row = asyncio.Future[Sequence[Any]]


def send_batch_params(batch: Sequence[Sequence[Any]]) -> list[Any]:
    """Return the arguments of ``messaging_send_batch`` for ``send_params``
    lists of one tenant and one queue cap."""
    columns: list[list[Any]] = [[] for _ in range(6)]
    first: list[int] = []
    count: list[int] = []
    devices: list[uuid.UUID] = []
    ciphertexts: list[bytes] = []
    for params in batch:
        for column, value in zip(columns, params[1:7], strict=True):
            column.append(value)
        first.append(len(devices) + 1)
        count.append(len(params[8]))
        devices.extend(params[8])
        ciphertexts.extend(params[9])
    tenant_id, cap, now = batch[0][0], batch[0][10], batch[0][7]
    return [tenant_id, cap, now, *columns, first, count, devices, ciphertexts]


class _SendBatcher:
    """The sends of one event loop, stored together per tenant.

    While ``SEND_STATEMENTS`` batch statements of a tenant are out, its new
    sends wait and go together in the next (``messaging.loops.Gatherer``).
    An idle relay sends at once; a busy one stores several sends per
    statement and per commit, which is what keeps PostgreSQL's work per
    message down. A lock wait holds up only its own tenant's sends.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sends: Gatherer[Any, tuple[list[Any], _Row]] = Gatherer(
            loop, self._store, limit=SEND_STATEMENTS
        )

    def submit(self, params: list[Any]) -> _Row:
        future: _Row = self.loop.create_future()
        self.sends.add(params[0], (params, future))
        return future

    async def _store(self, tenant_id: Any, items: list[tuple[list[Any], _Row]]) -> None:
        by_cap: dict[Any, list[tuple[list[Any], _Row]]] = {}
        for item in items:
            by_cap.setdefault(item[0][10], []).append(item)
        chunks = [chunk for group in by_cap.values() for chunk in _chunks(group)]
        await asyncio.gather(*(self._store_chunk(chunk) for chunk in chunks))

    @staticmethod
    async def _store_chunk(chunk: list[tuple[list[Any], _Row]]) -> None:
        try:
            rows = await _fetchall(
                SEND_BATCH_SQL, send_batch_params([params for params, _ in chunk])
            )
        except Exception as exc:
            for _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), row in zip(chunk, rows, strict=True):
            if not future.done():
                future.set_result(row[1:])


def _chunks(
    items: list[tuple[list[Any], _Row]],
) -> list[list[tuple[list[Any], _Row]]]:
    chunks: list[list[tuple[list[Any], _Row]]] = [[]]
    size = 0
    for item in items:
        weight = sum(len(ciphertext) for ciphertext in item[0][9])
        if chunks[-1] and (
            len(chunks[-1]) >= BATCH_SENDS or size + weight > BATCH_BYTES
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += weight
    return chunks


_batchers = PerLoop(_SendBatcher)


def _batcher() -> _SendBatcher:
    return _batchers.get()


# --- Reading and acknowledging ------------------------------------------------


def _entries(rows: Sequence[Sequence[Any]]) -> dict[uuid.UUID, list[InboxEntry]]:
    found: dict[uuid.UUID, list[InboxEntry]] = {}
    for device, seq, mid, room, sdev, smem, ciphertext, ts in rows:
        entry = InboxEntry(seq, mid, room, sdev, smem, bytes(ciphertext), ts)
        found.setdefault(device, []).append(entry)
    return found


def inbox(
    tenant_id: uuid.UUID, device_id: uuid.UUID, *, after: int, limit: int
) -> list[InboxEntry]:
    """Return up to ``limit`` queued envelopes of one device after ``after``."""
    with connection.cursor() as cursor:
        cursor.execute(INBOX_SQL, [tenant_id, [device_id], [after], limit])
        rows = cursor.fetchall()
    return _entries(rows).get(device_id, [])


async def ainbox(
    tenant_id: uuid.UUID, marks: dict[uuid.UUID, int], *, limit: int
) -> dict[uuid.UUID, list[InboxEntry]]:
    """Read several devices' queues of one tenant, each after its own mark."""
    devices = list(marks)
    rows = await _fetchall(
        INBOX_SQL, [tenant_id, devices, [marks[d] for d in devices], limit]
    )
    return _entries(rows)


def _ack_outcome(row: Sequence[Any] | None) -> tuple[int, int]:
    if row is None:
        return 0, 0
    outcome, acked, deleted = row
    if outcome != "ok":
        raise DeviceStateError(outcome)
    return int(acked), int(deleted)


def ack(tenant_id: uuid.UUID, device_id: uuid.UUID, up_to_seq: int) -> tuple[int, int]:
    """Acknowledge through Django's connection; return (acked, deleted)."""
    with connection.cursor() as cursor:
        cursor.execute(ACK_SQL, [tenant_id, device_id, None, up_to_seq])
        row = cursor.fetchone()
    return _ack_outcome(row)


async def aack(
    tenant_id: uuid.UUID, device_id: uuid.UUID, epoch: int, up_to_seq: int
) -> tuple[int, int]:
    """Check a socket's device, then acknowledge; return (acked, deleted)."""
    row = await _fetchone(ACK_SQL, [tenant_id, device_id, epoch, up_to_seq])
    return _ack_outcome(row)


async def astate(tenant_id: uuid.UUID, device_id: uuid.UUID, epoch: int) -> None:
    """Raise ``DeviceStateError`` unless a socket's device may act."""
    row = await _fetchone(STATE_SQL, [tenant_id, device_id, epoch])
    if row[0] != "ok":
        raise DeviceStateError(row[0])


async def aopen(
    tenant_id: uuid.UUID, device_id: uuid.UUID, member_id: uuid.UUID, channel: str
) -> tuple[str | None, bool | None, int | None, int | None, str | None]:
    """Open a socket's epoch; return (status, member active, epoch, acked,
    the wake-up channel it replaced)."""
    row = await _fetchone(OPEN_SQL, [tenant_id, device_id, member_id, channel])
    status, member_active, epoch, acked, previous = row
    return status, member_active, epoch, acked, previous


# --- The relay pool -----------------------------------------------------------

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)


def _connect_kwargs() -> dict[str, Any]:
    """Django's connection parameters for the default alias, for psycopg."""
    params: dict[str, Any] = connections["default"].get_connection_params()
    for key in ("cursor_factory", "context"):
        params.pop(key, None)
    params["autocommit"] = True
    # Django turns server-side prepared statements off; the relay's few
    # statement texts are prepared after a few runs (psycopg's default), which
    # spares PostgreSQL parsing and planning each call. (Behind PgBouncer in
    # transaction mode this needs its max_prepared_statements.)
    params["prepare_threshold"] = 5
    return params


async def _configure(conn: Any) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")


async def relay_pool() -> Any:
    """Return the running event loop's pool, opening it on first use."""
    from django.conf import settings
    from psycopg_pool import AsyncConnectionPool

    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        options = settings.DATABASES["default"]["OPTIONS"].get("pool") or {}
        pool = AsyncConnectionPool(
            kwargs=_connect_kwargs(),
            min_size=1,
            max_size=int(options.get("max_size", 10)),
            timeout=float(options.get("timeout", 10.0)),
            max_lifetime=float(options.get("max_lifetime", 1800)),
            configure=_configure,
            open=False,
            name="relay",
        )
        _pools[loop] = pool
        await pool.open()
    return pool


async def close_relay_pool() -> None:
    """Close the running event loop's pool (tests, shutdown)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


@functools.cache
def _binary(sql: str) -> str:
    """The relay pool's form of a statement: parameters sent as binary.

    Binary arrays of bytea and uuid cost neither side the hex text and the
    quoting of text arrays. (Django's client-side cursors take only ``%s``,
    so the shared texts are written with that.)
    """
    return sql.replace("%s", "%b")


async def _fetchone(sql: str, params: Sequence[Any]) -> Any:
    pool = await relay_pool()
    async with pool.connection() as conn:
        cursor = await conn.execute(_binary(sql), params, binary=True)
        return await cursor.fetchone()


async def _fetchall(sql: str, params: Sequence[Any]) -> list[Any]:
    pool = await relay_pool()
    async with pool.connection() as conn:
        cursor = await conn.execute(_binary(sql), params, binary=True)
        return list(await cursor.fetchall())
