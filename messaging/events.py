"""Channel-layer events of the relay and the helpers that publish them.

The channel layer is a wake-up path only: it may drop or coalesce events,
and every consumer reads what to push from PostgreSQL. Events are published
after the writing transaction commits (``publish_on_commit``), so nobody
hears about a write that was rolled back.

Events go to relay processes, not to sockets: each relay process has one
wake-up channel, owned by its hub (``messaging.hub``), and every hub joins
the group ``relay.hubs``. The hub hands an event to its own sockets of the
devices it names.

- ``relay.wake`` goes to one process: the channel recorded on the queue row
  of every device whose newest socket it holds. A send wakes each
  recipient's process with one ``send`` naming all its woken devices.
- ``relay.replace`` goes to the process that held a device's previous
  socket, when a newer one opens elsewhere.
- ``relay.revoke`` and ``relay.devices_changed`` are rare and go to every
  process (``relay.hubs``), so a socket is found wherever it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.db import transaction

from messaging.store import Queued

logger = logging.getLogger(__name__)

# The group every relay process's wake-up channel belongs to.
HUBS_GROUP = "relay.hubs"


class WakeEvent(TypedDict):
    """New deliveries were committed for these devices (uuid hex)."""

    type: Literal["relay.wake"]
    devices: list[str]


class RevokeEvent(TypedDict):
    """The devices were revoked: close their sockets with 4403."""

    type: Literal["relay.revoke"]
    devices: list[str]


class ReplaceEvent(TypedDict):
    """A newer socket of the device opened; older epochs close with 4409."""

    type: Literal["relay.replace"]
    device: str
    epoch: int


class DevicesChangedEvent(TypedDict):
    """The set of devices in ``room_id`` changed; tell these devices."""

    type: Literal["relay.devices_changed"]
    room_id: str
    devices: list[str]


RelayEvent = WakeEvent | RevokeEvent | ReplaceEvent | DevicesChangedEvent
# (group or channel name, event)
Outgoing = tuple[str, RelayEvent]


def _hexes(devices: Iterable[uuid.UUID | str]) -> list[str]:
    return sorted({uuid.UUID(str(device)).hex for device in devices})


def wake(channel: str, devices: Iterable[uuid.UUID]) -> Outgoing:
    """Return the wake-up of one process for some of its devices."""
    return channel, WakeEvent(type="relay.wake", devices=_hexes(devices))


def wakes(queued: Iterable[Queued]) -> list[Outgoing]:
    """Return one wake-up per process holding a socket of a queued device."""
    by_channel: dict[str, list[uuid.UUID]] = {}
    for entry in queued:
        if entry.channel:
            by_channel.setdefault(entry.channel, []).append(entry.device_id)
    return [wake(channel, devices) for channel, devices in sorted(by_channel.items())]


def revoke(device_id: uuid.UUID | str) -> Outgoing:
    """Return the event that closes a revoked device's sockets everywhere."""
    return HUBS_GROUP, RevokeEvent(type="relay.revoke", devices=_hexes([device_id]))


def replace(channel: str, device_id: uuid.UUID | str, epoch: int) -> Outgoing:
    """Return the event that closes, in the process of ``channel``, the
    device's sockets older than ``epoch``."""
    return channel, ReplaceEvent(
        type="relay.replace", device=uuid.UUID(str(device_id)).hex, epoch=epoch
    )


def devices_changed(
    room_id: uuid.UUID | str, devices: Iterable[uuid.UUID | str]
) -> list[Outgoing]:
    """Return the notice telling ``devices`` that a room's devices changed."""
    hexes = _hexes(devices)
    if not hexes:
        return []
    event = DevicesChangedEvent(
        type="relay.devices_changed", room_id=str(room_id), devices=hexes
    )
    return [(HUBS_GROUP, event)]


async def apublish(events: Sequence[Outgoing]) -> None:
    """Send ``events`` through the channel layer; log and drop on failure.

    A failure costs latency only: sockets are also swept from PostgreSQL,
    and revocation is re-checked on every frame and on a timer.
    """
    layer = get_channel_layer()
    if layer is None or not events:
        return
    for target, event in events:
        try:
            if is_channel(target):
                await layer.send(target, dict(event))
            else:
                await layer.group_send(target, dict(event))
        except ChannelFull:
            # A process that does not drain its channel (stopped, gone):
            # its sockets catch up on their next read or sweep.
            logger.debug("Channel %s is full; wake-up dropped", target)
        except Exception:
            logger.exception("Channel-layer publish to %s failed", target)


def is_channel(target: str) -> bool:
    """Whether ``target`` names a channel (``a.b!c``) rather than a group."""
    return "!" in target


# Inside a relay consumer's database call the events are collected and sent by
# the consumer on its own event loop, instead of blocking the shared database
# thread on a round trip to the channel layer.
_collector: contextvars.ContextVar[list[Outgoing] | None] = contextvars.ContextVar(
    "messaging_event_collector", default=None
)


@contextlib.contextmanager
def collect_events() -> Iterator[list[Outgoing]]:
    """Collect events published on commit inside the block, for the caller."""
    collected: list[Outgoing] = []
    token = _collector.set(collected)
    try:
        yield collected
    finally:
        _collector.reset(token)


def _dispatch(events: list[Outgoing]) -> None:
    collected = _collector.get()
    if collected is not None:
        collected.extend(events)
        return
    try:
        async_to_sync(apublish)(events)
    except Exception:
        logger.exception("Publishing %d relay events failed", len(events))


def publish_on_commit(events: Sequence[Outgoing]) -> None:
    """Publish ``events`` once the current transaction commits."""
    if not events:
        return
    pending = list(events)
    transaction.on_commit(lambda: _dispatch(pending))
