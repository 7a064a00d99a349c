"""Receivers of enrollment's device signals: purge, close sockets, tell peers.

Both signals are sent inside the approve or revoke transaction and its tenant
scope, so the purge commits or rolls back with the revocation, and the
channel-layer events go out only after commit.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from enrollment.models import Device
from messaging import actions, events

logger = logging.getLogger(__name__)


def _peer_notices(device: Device) -> list[events.Outgoing]:
    peers: dict[uuid.UUID, list[uuid.UUID]] = {}
    for room_id, peer in actions.get_peer_device_ids(device.member_id):
        if peer != device.pk:
            peers.setdefault(room_id, []).append(peer)
    return [
        notice
        for room_id, devices in sorted(peers.items())
        for notice in events.devices_changed(room_id, devices)
    ]


def on_device_revoked(sender: Any, *, device: Device, **kwargs: Any) -> None:
    """Purge the device's queue, close its sockets, tell peers sharing a room."""
    actions.do_purge_device_queue(device)
    events.publish_on_commit([events.revoke(device.pk), *_peer_notices(device)])
    logger.info("Device %s revoked: queue purged, sockets told to close", device.pk)


def on_device_approved(sender: Any, *, device: Device, **kwargs: Any) -> None:
    """Tell the devices sharing a room with the new device's member."""
    events.publish_on_commit(_peer_notices(device))
