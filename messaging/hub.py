"""The per-process part of the relay: one hub per event loop.

Every relay socket of a process registers with its hub, which does for all
of them what each would otherwise do alone:

- **Events.** The hub owns the process's wake-up channel, a member of the
  group ``relay.hubs``, and is the only reader of the channel layer in the
  process: sockets have no channel of their own, so opening one costs no
  Redis command and a Redis outage closes no socket. Opening a socket
  records that channel on the device's queue row, and a send returns, for
  each delivery it stored, the channel of the recipient's process. The
  sending socket wakes recipients in its own process directly and posts
  ``relay.wake`` to each other process one at a time: the devices woken
  there while one wake-up is on its way go together in the next, so under
  load a process gets one event per channel-layer send, not one per
  message. Revocations, replacements and room
  changes arrive the same way and go to the named devices' sockets here. A
  wake-up only says "read": sockets read what to push from PostgreSQL, so a
  lost or stale one delays and never loses.
- **Reads.** Sockets woken in the same turn read their queues with one
  statement per tenant (``messaging.store.ainbox``) instead of one each;
  while ``READ_STATEMENTS`` of a tenant's reads are out, the reads asked for
  meanwhile wait and go together in the next, so under load one statement
  serves many sockets (sends are gathered the same way, ``messaging.store``).
- **Survey.** Every ``min(SWEEP_INTERVAL, STATUS_INTERVAL)`` seconds one
  query per tenant reads the status and queue head of all the process's
  socket devices; the hub closes the sockets of revoked, replaced or
  deactivated devices (a fallback: revocation closes within a second through
  ``relay.revoke``, and every inbound frame re-checks) and, when a sweep is
  due, wakes those behind their queue (a fallback for dropped wake-ups).

The listener and the survey run while the hub has sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from messaging import events, sockets, store
from messaging.conf import messaging_settings
from messaging.loops import Gatherer, PerLoop, spawn

if TYPE_CHECKING:
    from messaging.consumers import RelayConsumer

logger = logging.getLogger(__name__)

# Read statements out at once per tenant: reads asked for meanwhile wait and
# go together in the next (one statement for many sockets under load).
READ_STATEMENTS = 1
# A read: (device, after, limit, where the answer goes).
_Read = tuple[uuid.UUID, int, int, "asyncio.Future[list[store.InboxEntry]]"]


class RelayHub:
    """The relay sockets of one event loop and the work they share."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.channel = ""
        self.by_tenant: dict[uuid.UUID, set[RelayConsumer]] = {}
        self.by_device: dict[uuid.UUID, set[RelayConsumer]] = {}
        self.listener: asyncio.Task[None] | None = None
        self.survey: asyncio.Task[None] | None = None
        self._outbox: dict[str, set[uuid.UUID]] = {}
        self._posting: set[str] = set()
        self._reads: Gatherer[uuid.UUID, _Read] = Gatherer(
            loop, self._read_group, limit=READ_STATEMENTS
        )

    async def start(self) -> str:
        """Return the process's wake-up channel, creating it on first use."""
        if not self.channel:
            layer = get_channel_layer()
            self.channel = await layer.new_channel() if layer is not None else ""
        return self.channel

    async def _join(self) -> None:
        """(Re)join ``relay.hubs``: the group outlives no idle process forever."""
        layer = get_channel_layer()
        if layer is not None and self.channel:
            await layer.group_add(events.HUBS_GROUP, self.channel)

    # Sockets -------------------------------------------------------------------

    def add(self, consumer: RelayConsumer) -> None:
        """Register an open socket; start the listener and the survey."""
        identity = consumer.identity
        assert identity is not None
        self.by_tenant.setdefault(identity.tenant_id, set()).add(consumer)
        self.by_device.setdefault(identity.device_id, set()).add(consumer)
        if self.channel and (self.listener is None or self.listener.done()):
            self.listener = self.loop.create_task(self._listen())
        if self.survey is None or self.survey.done():
            self.survey = self.loop.create_task(self._run_survey())

    def discard(self, consumer: RelayConsumer) -> None:
        """Forget a socket; stop the background tasks after the last one."""
        identity = consumer.identity
        if identity is None:
            return
        for index, key in (
            (self.by_tenant, identity.tenant_id),
            (self.by_device, identity.device_id),
        ):
            members = index.get(key)
            if members is not None:
                members.discard(consumer)
                if not members:
                    del index[key]
        if not self.by_device:
            for task in (self.listener, self.survey):
                if task is not None:
                    task.cancel()
            self.listener = self.survey = None

    # Wake-ups ------------------------------------------------------------------

    def wake_local(self, devices: Iterable[uuid.UUID]) -> None:
        """Wake this process's sockets of ``devices``."""
        for device in devices:
            for consumer in self.by_device.get(device, ()):
                consumer.wake()

    def replace_local(self, device: uuid.UUID, epoch: int) -> None:
        """Close this process's sockets of ``device`` older than ``epoch``."""
        for consumer in list(self.by_device.get(device, ())):
            consumer.replaced_by(epoch)

    def publish_soon(self, outgoing: Iterable[events.Outgoing]) -> None:
        """Publish events in the background (the caller need not wait)."""
        pending = list(outgoing)
        if pending:
            spawn(events.apublish(pending))

    def handle(self, message: dict[str, Any]) -> None:
        """Hand one channel-layer event to the sockets it names."""
        kind = message.get("type")
        devices = _devices(message.get("devices"))
        if kind == "relay.wake":
            self.wake_local(devices)
        elif kind == "relay.revoke":
            for device in devices:
                for consumer in list(self.by_device.get(device, ())):
                    consumer.revoked()
        elif kind == "relay.replace":
            for device in _devices([message.get("device")]):
                epoch = message.get("epoch")
                if isinstance(epoch, int):
                    self.replace_local(device, epoch)
        elif kind == "relay.devices_changed":
            room = _devices([message.get("room_id")])
            for device in devices if room else ():
                for consumer in list(self.by_device.get(device, ())):
                    consumer.devices_changed(room[0])

    def post(self, queued: Iterable[store.Queued]) -> None:
        """Wake the recipients of a send, here at once, elsewhere batched."""
        local = []
        for entry in queued:
            if not entry.channel:
                continue
            if entry.channel == self.channel:
                local.append(entry.device_id)
            else:
                self._outbox.setdefault(entry.channel, set()).add(entry.device_id)
        self.wake_local(local)
        for channel in self._outbox.keys() - self._posting:
            self._posting.add(channel)
            spawn(self._post_wakes(channel))

    async def _listen(self) -> None:
        layer = get_channel_layer()
        joined = False
        while True:
            try:
                if not joined:
                    await self._join()
                    joined = True
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis away: sockets stay open and keep sending; the sweep
                # catches up on what the missed wake-ups would have said.
                logger.exception("Relay wake-up channel failed; retrying")
                joined = False
                await asyncio.sleep(1)
                continue
            try:
                self.handle(message)
            except Exception:
                logger.exception("Relay event %s failed", message.get("type"))

    # Reads ---------------------------------------------------------------------

    async def read(
        self, identity: sockets.SocketIdentity, *, after: int, limit: int
    ) -> list[store.InboxEntry]:
        """Read up to ``limit`` envelopes of a socket's queue after ``after``."""
        future: asyncio.Future[list[store.InboxEntry]] = self.loop.create_future()
        self._reads.add(identity.tenant_id, (identity.device_id, after, limit, future))
        return await future

    async def _read_group(self, tenant_id: uuid.UUID, reads: list[_Read]) -> None:
        await asyncio.gather(
            *(self._read_batch(tenant_id, batch) for batch in _unique(reads))
        )

    async def _post_wakes(self, channel: str) -> None:
        """Wake another process, one event at a time: the devices gathered
        while the last event was on its way go in the next."""
        try:
            while devices := self._outbox.pop(channel, None):
                await events.apublish([events.wake(channel, devices)])
        finally:
            self._posting.discard(channel)

    async def _read_batch(self, tenant_id: uuid.UUID, batch: list[_Read]) -> None:
        marks = {device: after for device, after, _, _ in batch}
        limit = max(limit for _, _, limit, _ in batch)
        try:
            found = await store.ainbox(tenant_id, marks, limit=limit)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for device, _, wanted, future in batch:
            if not future.done():
                future.set_result(found.get(device, [])[:wanted])

    # Survey --------------------------------------------------------------------

    async def _run_survey(self) -> None:
        last_sweep = time.monotonic()
        while self.by_tenant:
            sweep_every = float(messaging_settings.SWEEP_INTERVAL)
            status_every = float(messaging_settings.STATUS_INTERVAL)
            await asyncio.sleep(min(sweep_every, status_every))
            sweep_due = time.monotonic() - last_sweep >= sweep_every - 0.01
            if sweep_due:
                last_sweep = time.monotonic()
            try:
                await self.tick(sweep=sweep_due)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Relay socket survey failed")

    async def tick(self, *, sweep: bool = True) -> None:
        """Check every live socket of this loop once (one query per tenant)."""
        live = {
            tenant_id: [c for c in consumers if not c.closing]
            for tenant_id, consumers in self.by_tenant.items()
        }
        wanted = {
            tenant_id: sorted({c.device_id for c in consumers})
            for tenant_id, consumers in live.items()
            if consumers
        }
        if not wanted:
            return
        survey = database_sync_to_async(sockets.survey_devices, thread_sensitive=False)
        states = await survey(wanted)
        if sweep:
            # Keep the group membership fresh (channels-redis expires it).
            with contextlib.suppress(Exception):
                await self._join()
        for consumers in live.values():
            for consumer in consumers:
                await consumer.surveyed(states.get(consumer.device_id), sweep=sweep)


def _devices(raw: Any) -> list[uuid.UUID]:
    found = []
    for value in raw if isinstance(raw, list) else ():
        try:
            found.append(uuid.UUID(hex=str(value)))
        except ValueError:
            continue
    return found


def _unique(reads: list[_Read]) -> list[list[_Read]]:
    """Split reads into batches naming each device once (a replaced socket
    and its successor may both read)."""
    batches: list[tuple[set[uuid.UUID], list[_Read]]] = []
    for read in reads:
        for named, batch in batches:
            if read[0] not in named:
                named.add(read[0])
                batch.append(read)
                break
        else:
            batches.append(({read[0]}, [read]))
    return [batch for _, batch in batches]


_hubs = PerLoop(RelayHub)


def relay_hub() -> RelayHub:
    """Return the relay hub of the running event loop."""
    return _hubs.get()
