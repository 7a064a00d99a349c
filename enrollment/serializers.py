"""Input validation and output shapes of the enrollment API."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agentvault.serializers import StrictInputSerializer
from enrollment.crypto import (
    CHALLENGE_BYTES,
    KEY_BYTES,
    MAX_PREKEY_ID,
    SIGNATURE_BYTES,
)
from enrollment.models import Device, Invite
from tenants.models import Member


@extend_schema_field({"type": "string", "format": "byte"})
class Base64Field(serializers.Field[bytes, Any, str, Any]):
    """Bytes as standard, padded base64 text, optionally of a fixed length."""

    default_error_messages = {
        "invalid": _("Send standard, padded base64."),
        "length": _("Expected {length} bytes."),
    }

    def __init__(self, *, length: int | None = None, **kwargs: Any) -> None:
        self.length = length
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> bytes:
        """Decode strictly; refuse URL-safe, unpadded or wrong-length input."""
        if not isinstance(data, str) or len(data) > 4096:
            self.fail("invalid")
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            self.fail("invalid")
        if self.length is not None and len(raw) != self.length:
            self.fail("length", length=self.length)
        return raw

    def to_representation(self, value: Any) -> str:
        """Encode as standard, padded base64."""
        return base64.b64encode(bytes(value)).decode("ascii")


# --- Invites -------------------------------------------------------------------


class InviteCreateSerializer(StrictInputSerializer):
    """An invite for a new member (name, kind, role) or an existing member."""

    member_id = serializers.UUIDField(required=False)
    name = serializers.CharField(required=False, max_length=200)
    kind = serializers.ChoiceField(choices=Member.Kind.choices, required=False)
    role = serializers.ChoiceField(choices=Member.Role.choices, required=False)
    expires_in = serializers.IntegerField(required=False, min_value=1)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Require exactly one of member_id and name; agents have the agent role."""
        new_member = {"name", "kind", "role"} & attrs.keys()
        if "member_id" in attrs and new_member:
            raise serializers.ValidationError(
                _("Give member_id, or name with kind and role, not both.")
            )
        if "member_id" not in attrs and "name" not in attrs:
            raise serializers.ValidationError(_("Give member_id or name."))
        kind, role = attrs.get("kind"), attrs.get("role")
        is_agent_kind = kind == Member.Kind.AGENT
        if role is not None and kind is not None and is_agent_kind != (role == "agent"):
            raise serializers.ValidationError(
                {"role": [_("Agents have the agent role, and only agents do.")]}
            )
        if role == Member.Role.AGENT and kind is None:
            attrs["kind"] = Member.Kind.AGENT
        return attrs


class InviteSerializer(serializers.ModelSerializer[Invite]):
    """An invite as admins see it: never its secret."""

    member_id = serializers.UUIDField(allow_null=True)
    device_id = serializers.UUIDField(allow_null=True)
    status = serializers.CharField()

    class Meta:
        model = Invite
        fields = [
            "id",
            "status",
            "member_id",
            "member_name",
            "member_kind",
            "member_role",
            "created_at",
            "expires_at",
            "used_at",
            "revoked_at",
            "device_id",
        ]


class InviteCreatedSerializer(InviteSerializer):
    """A new invite, with its token: the only time the token is shown."""

    token = serializers.CharField()

    class Meta(InviteSerializer.Meta):
        fields = [*InviteSerializer.Meta.fields, "token"]


# --- Enrollment and device authentication -------------------------------------


class EnrollmentSerializer(StrictInputSerializer):
    """``POST /enrollments``: the invite token, the device's key and proof."""

    invite_token = serializers.CharField(max_length=200, trim_whitespace=False)
    identity_key = Base64Field()
    device_name = serializers.CharField(max_length=200)
    proof = Base64Field(length=SIGNATURE_BYTES)


class EnrollmentResultSerializer(serializers.Serializer[Any]):
    """The pending device an enrollment created."""

    device_id = serializers.UUIDField()
    member_id = serializers.UUIDField()
    tenant_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Device.Status.choices)
    fingerprint = serializers.CharField()


class ChallengeRequestSerializer(StrictInputSerializer):
    """``POST /auth/challenge``: the device asking."""

    device_id = serializers.UUIDField()


class TokenRequestSerializer(StrictInputSerializer):
    """``POST /auth/token``: the challenge and the identity key's signature."""

    device_id = serializers.UUIDField()
    challenge = Base64Field(length=CHALLENGE_BYTES)
    signature = Base64Field(length=SIGNATURE_BYTES)


class ChallengeSerializer(serializers.Serializer[Any]):
    """A single-use challenge and how long it stays valid (seconds)."""

    challenge = Base64Field()
    expires_in = serializers.IntegerField()


class AccessTokenSerializer(serializers.Serializer[Any]):
    """A device's bearer token."""

    access_token = serializers.CharField()
    token_type = serializers.ChoiceField(choices=["Bearer"])
    expires_in = serializers.IntegerField()


# --- Devices -------------------------------------------------------------------


class DeviceSerializer(serializers.ModelSerializer[Device]):
    """A device as admins and the device itself see it."""

    member_id = serializers.UUIDField()
    member_name = serializers.CharField(source="member.name")
    identity_key = Base64Field()

    class Meta:
        model = Device
        fields = [
            "id",
            "member_id",
            "member_name",
            "name",
            "status",
            "fingerprint",
            "identity_key",
            "created_at",
            "approved_at",
            "revoked_at",
            "last_seen_at",
        ]


# --- Prekeys -------------------------------------------------------------------


def _prekey_id() -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=MAX_PREKEY_ID)


class SignedPrekeyInSerializer(StrictInputSerializer):
    """A signed prekey upload."""

    id = _prekey_id()
    public_key = Base64Field(length=KEY_BYTES)
    signature = Base64Field(length=SIGNATURE_BYTES)


class OneTimePrekeyInSerializer(StrictInputSerializer):
    """A one-time prekey upload."""

    id = _prekey_id()
    public_key = Base64Field(length=KEY_BYTES)


class PrekeyUploadSerializer(StrictInputSerializer):
    """``PUT /devices/me/prekeys``."""

    signed_prekey = SignedPrekeyInSerializer(required=False)
    one_time_prekeys = OneTimePrekeyInSerializer(many=True, required=False)

    def __init__(self, *args: Any, per_upload: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_upload = per_upload

    def validate_one_time_prekeys(
        self, value: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Refuse more than the per-upload limit and repeated ids."""
        if len(value) > self.per_upload:
            raise serializers.ValidationError(
                _("At most {limit} one-time prekeys per upload.").format(
                    limit=self.per_upload
                )
            )
        ids = [item["id"] for item in value]
        if len(ids) != len(set(ids)):
            raise serializers.ValidationError(_("One-time prekey ids repeat."))
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Require something to upload."""
        if not attrs.get("signed_prekey") and not attrs.get("one_time_prekeys"):
            raise serializers.ValidationError(_("Nothing to upload."))
        return attrs


class PrekeyCountSerializer(serializers.Serializer[Any]):
    """How many one-time prekeys the device holds after an upload."""

    one_time_prekeys = serializers.IntegerField()


class PrekeyStatusSerializer(serializers.Serializer[Any]):
    """The device's one-time prekeys left and its signed prekey's id."""

    one_time_prekeys = serializers.IntegerField()
    signed_prekey_id = serializers.IntegerField(allow_null=True)


class OneTimePrekeyOutSerializer(serializers.Serializer[Any]):
    """A one-time prekey handed out in a bundle."""

    id = serializers.IntegerField()
    public_key = Base64Field()


class SignedPrekeyOutSerializer(OneTimePrekeyOutSerializer):
    """A signed prekey in a bundle."""

    signature = Base64Field()


class PrekeyBundleSerializer(serializers.Serializer[Any]):
    """What a peer needs to start a session with one device."""

    device_id = serializers.UUIDField()
    identity_key = Base64Field()
    signed_prekey = SignedPrekeyOutSerializer()
    one_time_prekey = OneTimePrekeyOutSerializer(allow_null=True)
