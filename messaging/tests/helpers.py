"""Builders shared by the messaging tests: rooms, envelopes, authenticated calls."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

from rest_framework.test import APIClient

from enrollment.models import Device
from messaging.models import Room, RoomMembership
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import device_token


def make_room(*members: Member, name: str = "room") -> Room:
    """Create a room holding ``members`` (all of one tenant)."""
    tenant_id = members[0].tenant_id
    with tenant_scope(tenant_id):
        room = Room.objects.create(tenant_id=tenant_id, name=name)
        for member in members:
            RoomMembership.objects.create(tenant_id=tenant_id, room=room, member=member)
    return room


def as_device(api: APIClient, device: Device) -> APIClient:
    """Authenticate ``api`` as ``device``."""
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {device_token(device)}")
    return api


def envelope(device: Device | uuid.UUID, size: int = 32) -> dict[str, str]:
    """Return one envelope of ``size`` random bytes for ``device``."""
    device_id = device.pk if isinstance(device, Device) else device
    return {
        "device_id": str(device_id),
        "ciphertext": base64.b64encode(os.urandom(size)).decode(),
    }


def send_body(*devices: Device | uuid.UUID, cid: str | None = None) -> dict[str, Any]:
    """Return a send body with one envelope per device."""
    return {
        "client_message_id": cid or uuid.uuid4().hex,
        "envelopes": [envelope(device) for device in devices],
    }


def post_message(api: APIClient, room: Room | uuid.UUID | str, body: Any) -> Any:
    """POST a send to the room and return the response."""
    room_id = room.pk if isinstance(room, Room) else room
    return api.post(f"/api/v1/rooms/{room_id}/messages", body, format="json")
