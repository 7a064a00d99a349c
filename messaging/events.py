"""Channel-layer events of the relay and the helpers that publish them.

The channel layer is a wake-up path only: it may drop or coalesce events,
and every consumer reads what to push from PostgreSQL. Events are published
after the writing transaction commits (``publish_on_commit``), so nobody
hears about a write that was rolled back.

Each relay socket joins the group of its device, ``dev.<uuid hex>``. Event
types map to consumer handlers by Channels' rule (``relay.wake`` calls
``relay_wake``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)


class WakeEvent(TypedDict):
    """New deliveries were committed for the device, up to ``seq``."""

    type: Literal["relay.wake"]
    seq: int


class RevokeEvent(TypedDict):
    """The device was revoked: close its sockets with 4403."""

    type: Literal["relay.revoke"]


class ReplaceEvent(TypedDict):
    """A newer socket of the device opened; older epochs close with 4409."""

    type: Literal["relay.replace"]
    epoch: int


class DevicesChangedEvent(TypedDict):
    """The set of devices in ``room_id`` changed; tell the client."""

    type: Literal["relay.devices_changed"]
    room_id: str


RelayEvent = WakeEvent | RevokeEvent | ReplaceEvent | DevicesChangedEvent
Outgoing = tuple[str, RelayEvent]


def device_group(device_id: uuid.UUID | str) -> str:
    """Return the group of every relay socket of one device."""
    return f"dev.{uuid.UUID(str(device_id)).hex}"


def wake(device_id: uuid.UUID | str, seq: int) -> Outgoing:
    """Return the wake-up for a device whose queue grew to ``seq``."""
    return device_group(device_id), WakeEvent(type="relay.wake", seq=seq)


def revoke(device_id: uuid.UUID | str) -> Outgoing:
    """Return the event that closes a revoked device's sockets."""
    return device_group(device_id), RevokeEvent(type="relay.revoke")


def replace(device_id: uuid.UUID | str, epoch: int) -> Outgoing:
    """Return the event that closes the device's sockets older than ``epoch``."""
    return device_group(device_id), ReplaceEvent(type="relay.replace", epoch=epoch)


def devices_changed(device_id: uuid.UUID | str, room_id: uuid.UUID | str) -> Outgoing:
    """Return the notice telling a device that a room's devices changed."""
    return device_group(device_id), DevicesChangedEvent(
        type="relay.devices_changed", room_id=str(room_id)
    )


async def apublish(events: Sequence[Outgoing]) -> None:
    """Send ``events`` through the channel layer; log and drop on failure.

    A failure costs latency only: consumers also sweep PostgreSQL, and
    revocation is re-checked on every frame and on a timer.
    """
    layer = get_channel_layer()
    if layer is None or not events:
        return
    for group, event in events:
        try:
            await layer.group_send(group, dict(event))
        except Exception:
            logger.exception("Channel-layer publish to %s failed", group)


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
