"""API errors of enrollment, device authentication and the prekey directory."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

from agentvault.errors import ApiError


class InvalidInviteError(ApiError):
    """The invite is unknown, expired, used, revoked or of another tenant."""

    code = "invalid_invite"
    status = 400
    template = _("This invite cannot be used.")


class InvalidKeyError(ApiError):
    """A public key is not a usable key of the expected type."""

    code = "invalid_key"
    status = 400
    template = _("The key is not a valid public key.")


class InvalidProofError(ApiError):
    """The enrollment proof is not the identity key's signature of the token."""

    code = "invalid_proof"
    status = 400
    template = _("The proof does not verify against the identity key.")


class IdentityKeyInUseError(ApiError):
    """Another device of the tenant already uses this identity key."""

    code = "identity_key_in_use"
    status = 409
    template = _("This identity key is already enrolled; generate a new one.")


class InviteLifetimeError(ApiError):
    """The requested invite lifetime is out of bounds."""

    code = "invalid_lifetime"
    status = 400
    template = _("An invite lives between 1 minute and {max_hours} hours.")


class InviteNotOpenError(ApiError):
    """The invite was already used, revoked, or has expired."""

    code = "invite_not_open"
    status = 409
    template = _("This invite is no longer open.")


class ChallengeFailedError(ApiError):
    """The challenge or its signature was refused (one answer for all causes)."""

    code = "challenge_failed"
    status = 401
    template = _("The challenge response was not accepted.")

    def headers(self) -> dict[str, str]:
        """Return the ``WWW-Authenticate`` challenge."""
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="agentvault"'}


class DeviceRevokedError(ApiError):
    """The device was revoked and cannot be approved."""

    code = "device_revoked"
    status = 409
    template = _("This device was revoked and cannot be approved.")


class BadSignatureError(ApiError):
    """The signed prekey's signature does not verify against the identity key."""

    code = "bad_signature"
    status = 422
    template = _("The signed prekey's signature does not verify.")


class PrekeyIdConflictError(ApiError):
    """A prekey id is already stored with another key."""

    code = "prekey_id_conflict"
    status = 409
    template = _("A prekey id is already in use with another key.")


class PrekeyIdReusedError(ApiError):
    """A one-time prekey id that was handed out before was uploaded again."""

    code = "prekey_id_reused"
    status = 409
    template = _("A one-time prekey id was already handed out; use new ids.")


class PrekeyLimitError(ApiError):
    """The device would hold more one-time prekeys than allowed."""

    code = "prekey_limit_reached"
    status = 409
    template = _("A device holds at most {limit} one-time prekeys.")


class NoSharedRoomError(ApiError):
    """Prekeys are handed out only between members who share a room."""

    code = "no_shared_room"
    status = 403
    template = _("You share no room with this member.")
