"""Input validation and output shapes of rooms, sends and the inbox.

The send payload is parsed by one plain function shared by the REST view and
the relay consumer, so both apply exactly the same rules.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import uuid
from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from agentvault.errors import BadRequestError
from agentvault.serializers import StrictInputSerializer
from enrollment.models import Device
from enrollment.serializers import Base64Field
from messaging.conf import DEFAULTS, messaging_settings
from messaging.errors import PayloadTooLargeError
from messaging.models import Room
from messaging.store import Envelope, InboxEntry


@dataclasses.dataclass(frozen=True)
class SendRequest:
    """A validated send: its client id and one envelope per device."""

    client_message_id: str
    envelopes: list[Envelope]


def _invalid(field: str, message: str) -> BadRequestError:
    return BadRequestError(fields={field: [message]})


def parse_uuid(value: Any, field: str) -> uuid.UUID:
    """Return ``value`` as a UUID or raise ``invalid_request`` naming ``field``."""
    if not isinstance(value, str):
        raise _invalid(field, "Must be a UUID string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _invalid(field, "Must be a UUID string.") from None


def parse_seq(value: Any, field: str) -> int:
    """Return a non-negative integer sequence number or raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid(field, "Must be a non-negative integer.")
    if value > 2**62:
        raise _invalid(field, "Is out of range.")
    return int(value)


def parse_send(data: Any) -> SendRequest:
    """Validate a send body ``{client_message_id, envelopes}``.

    - ``client_message_id``: 1 to 64 printable ASCII characters.
    - ``envelopes``: a list of ``{device_id, ciphertext}``, ciphertext in
      standard base64, each at most ``MAX_CIPHERTEXT_BYTES`` once decoded
      (413 ``payload_too_large`` beyond).
    """
    if not isinstance(data, dict):
        raise BadRequestError(fields={"non_field_errors": ["Expected an object."]})

    client_id = data.get("client_message_id")
    limit = int(messaging_settings.MAX_CLIENT_MESSAGE_ID)
    if (
        not isinstance(client_id, str)
        or not 1 <= len(client_id) <= limit
        or not client_id.isascii()
        or not client_id.isprintable()
    ):
        raise _invalid(
            "client_message_id", f"Must be 1 to {limit} printable ASCII characters."
        )

    raw = data.get("envelopes")
    if not isinstance(raw, list):
        raise _invalid("envelopes", "Must be a list.")

    max_bytes = int(messaging_settings.MAX_CIPHERTEXT_BYTES)
    envelopes = []
    for item in raw:
        if not isinstance(item, dict):
            raise _invalid("envelopes", "Each envelope must be an object.")
        device_id = parse_uuid(item.get("device_id"), "envelopes.device_id")
        text = item.get("ciphertext")
        if not isinstance(text, str) or not text:
            raise _invalid("envelopes.ciphertext", "Must be non-empty base64.")
        # Cheap bound before decoding: base64 is 4 characters per 3 bytes.
        if len(text) > (max_bytes + 2) // 3 * 4:
            raise PayloadTooLargeError(fields={"device_id": str(device_id)})
        try:
            ciphertext = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("envelopes.ciphertext", "Must be base64.") from None
        if len(ciphertext) > max_bytes:
            raise PayloadTooLargeError(fields={"device_id": str(device_id)})
        envelopes.append(Envelope(device_id=device_id, ciphertext=ciphertext))

    return SendRequest(client_message_id=client_id, envelopes=envelopes)


def b64(data: bytes) -> str:
    """Return standard base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


def inbox_entry(entry: InboxEntry) -> dict[str, Any]:
    """Return the JSON shape of one queued envelope (inbox and relay alike)."""
    return {
        "seq": entry.seq,
        "message_id": str(entry.message_id),
        "room_id": str(entry.room_id),
        "sender_device_id": str(entry.sender_device_id),
        "sender_member_id": str(entry.sender_member_id),
        "ciphertext": b64(entry.ciphertext),
        "server_ts": entry.server_ts.isoformat(),
    }


class RoomSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """A room with the ids of its members."""

    members = serializers.SerializerMethodField()

    class Meta:
        model = Room
        fields = ["id", "name", "created_at", "members"]

    def get_members(self, room: Room) -> list[str]:
        """Return the member ids of the room (prefetched)."""
        return [str(m.member_id) for m in room.memberships.all()]


class RoomListSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Output of ``GET /rooms``."""

    rooms = RoomSerializer(many=True)


class CreateRoomSerializer(StrictInputSerializer):
    """Input of ``POST /rooms``."""

    name = serializers.CharField(max_length=200)
    members = serializers.ListField(
        child=serializers.UUIDField(), required=False, default=list, max_length=1000
    )


class RoomMemberSerializer(StrictInputSerializer):
    """Input of ``POST/DELETE /rooms/{id}/members``."""

    member_id = serializers.UUIDField()


class AckSerializer(StrictInputSerializer):
    """Input of ``POST /devices/me/inbox/ack``."""

    up_to_seq = serializers.IntegerField(min_value=0, max_value=2**62)


def room_device(device: Device, *, queue_depth: int | None = None) -> dict[str, Any]:
    """Return the JSON shape of one active device of a room."""
    shape: dict[str, Any] = {
        "device_id": str(device.pk),
        "member_id": str(device.member_id),
        "name": device.name,
        "identity_key": b64(bytes(device.identity_key)),
        "fingerprint": device.fingerprint,
    }
    if queue_depth is not None:
        shape["queue_depth"] = queue_depth
    return shape


# --- Shapes of bodies built by hand, for the API schema ------------------------


class EnvelopeSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One recipient device's ciphertext in a send (see ``parse_send``)."""

    device_id = serializers.UUIDField()
    ciphertext = Base64Field()


class SendSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Input of ``POST /rooms/{id}/messages`` (parsed by ``parse_send``)."""

    client_message_id = serializers.CharField(
        min_length=1,
        max_length=DEFAULTS["MAX_CLIENT_MESSAGE_ID"],
        validators=[RegexValidator(r"^[ -~]+$")],
        help_text="Printable ASCII characters.",
    )
    envelopes = EnvelopeSerializer(many=True)


class SendResultSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Output of a send: the stored message's id and server time."""

    message_id = serializers.UUIDField()
    server_ts = serializers.DateTimeField()


class InboxEntrySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One queued envelope (``inbox_entry``)."""

    seq = serializers.IntegerField()
    message_id = serializers.UUIDField()
    room_id = serializers.UUIDField()
    sender_device_id = serializers.UUIDField()
    sender_member_id = serializers.UUIDField()
    ciphertext = Base64Field()
    server_ts = serializers.DateTimeField()


class InboxSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Output of ``GET /devices/me/inbox``."""

    envelopes = InboxEntrySerializer(many=True)


class AckResultSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Output of ``POST /devices/me/inbox/ack``."""

    acked_seq = serializers.IntegerField()
    deleted = serializers.IntegerField()


class RoomDeviceSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One active device of a room (``room_device``)."""

    device_id = serializers.UUIDField()
    member_id = serializers.UUIDField()
    name = serializers.CharField()
    identity_key = Base64Field()
    fingerprint = serializers.CharField()
    queue_depth = serializers.IntegerField(
        required=False, help_text="Queued envelopes; shown to admins only."
    )


class RoomDevicesSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Output of ``GET /rooms/{id}/devices``."""

    room_id = serializers.UUIDField()
    devices = RoomDeviceSerializer(many=True)
