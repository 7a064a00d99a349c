"""Provide the SDK's single exception tree, each class with a stable code.

Every error the SDK raises derives from :class:`SdkError`. Callers branch on
the class or on its ``code`` attribute, which is a stable snake_case string.
Messages are fixed sentences: they never carry key material, plaintext or
envelope bytes.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadEnvelopeError",
    "BadSignatureError",
    "BadStorageKeyError",
    "CannotSendError",
    "CryptoError",
    "DecryptFailedError",
    "DuplicateMessageError",
    "IdentityChangedError",
    "InsecureKeyFileError",
    "InvalidKeyError",
    "LowOrderKeyError",
    "NoSessionError",
    "ProtocolError",
    "SdkError",
    "StateCorruptError",
    "TooManySkippedError",
    "UnknownPrekeyError",
    "UnsupportedVersionError",
]


class SdkError(Exception):
    """Base class of every error raised by the AgentVault client SDK."""

    code: str = "sdk_error"
    default_message: str = "The AgentVault client failed."

    def __init__(self, message: str | None = None) -> None:
        """Create the error with a fixed, secret-free message."""
        self.message = message or self.default_message
        super().__init__(self.message)

    def __repr__(self) -> str:
        """Return the class name and stable code only."""
        return f"{type(self).__name__}(code={self.code!r})"


class AuthError(SdkError):
    """Raise when the server refuses the client's credentials."""

    code = "auth_failed"
    default_message = "Authentication failed."


class ProtocolError(SdkError):
    """Raise when a peer or the server breaks the protocol."""

    code = "protocol_error"
    default_message = "The peer or server broke the protocol."


class CryptoError(SdkError):
    """Raise when a cryptographic check fails or key material is unusable."""

    code = "crypto_error"
    default_message = "A cryptographic operation failed."


class BadEnvelopeError(ProtocolError):
    """Raise when an envelope is malformed (length, type, flags, padding)."""

    code = "bad_envelope"
    default_message = "The envelope is malformed."


class UnsupportedVersionError(ProtocolError):
    """Raise when an envelope or stored record has an unknown version."""

    code = "unsupported_version"
    default_message = "The envelope version is not supported."


class DuplicateMessageError(ProtocolError):
    """Raise when a message was already decrypted (its key is gone)."""

    code = "duplicate_message"
    default_message = "The message was already received."


class TooManySkippedError(ProtocolError):
    """Raise when a header would skip more message keys than allowed."""

    code = "too_many_skipped"
    default_message = "The message skips too many keys."


class UnknownPrekeyError(ProtocolError):
    """Raise when a prekey message names a prekey this device does not hold."""

    code = "unknown_prekey"
    default_message = "The message uses an unknown prekey."


class NoSessionError(ProtocolError):
    """Raise when no session exists for the peer device."""

    code = "no_session"
    default_message = "There is no session with this device."


class CannotSendError(ProtocolError):
    """Raise when a responder session is asked to send before it received."""

    code = "cannot_send"
    default_message = "The session cannot send before it has received."


class DecryptFailedError(CryptoError):
    """Raise when an envelope does not authenticate."""

    code = "decrypt_failed"
    default_message = "The message could not be decrypted."


class BadSignatureError(CryptoError):
    """Raise when a signature (e.g. on a signed prekey) does not verify."""

    code = "bad_signature"
    default_message = "The signature is not valid."


class LowOrderKeyError(CryptoError):
    """Raise when an X25519 agreement gives the all-zero output."""

    code = "low_order_key"
    default_message = "The public key has low order."


class InvalidKeyError(CryptoError):
    """Raise when a public key has the wrong length or is not a valid point."""

    code = "invalid_key"
    default_message = "The public key is not valid."


class IdentityChangedError(CryptoError):
    """Raise when a peer's identity key differs from the pinned one."""

    code = "identity_changed"
    default_message = (
        "The peer's identity key changed; accept the new key before sending."
    )


class BadStorageKeyError(CryptoError):
    """Raise when the local store cannot be opened with the given key."""

    code = "bad_storage_key"
    default_message = "The storage key or passphrase is wrong."


class StateCorruptError(CryptoError):
    """Raise when a sealed local record fails to open or parse."""

    code = "state_corrupt"
    default_message = "A stored record is corrupt."


class InsecureKeyFileError(CryptoError):
    """Raise when a key file is readable or writable by other users."""

    code = "insecure_key_file"
    default_message = "The key file must have permissions 0600 or stricter."


# --- Transport and API errors (SDK transport, issue #6) -----------------------
# Raised by agentvault_client.api, .relay, .aio and .cli. An API error carries
# the server's stable ``code`` (from its ``{code, message, fields}`` envelope),
# the HTTP status and the structured ``fields``; never a token or a body.

__all__ += [
    "ApiError",
    "ConflictError",
    "DeviceMismatchError",
    "DevicePendingError",
    "DeviceRevokedError",
    "NotEnrolledError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ProfileError",
    "RateLimitedError",
    "RelayClosedError",
    "StaleDevicesError",
    "TransportError",
    "UnauthorizedError",
]


class TransportError(SdkError):
    """Raise when the server cannot be reached or the connection drops."""

    code = "transport_error"
    default_message = "The server could not be reached."


class ApiError(SdkError):
    """Raise when the server answers with an error envelope.

    ``code`` is the server's stable code (``invalid_invite``, ``not_found``,
    ...), ``status`` the HTTP status and ``fields`` the structured details.
    """

    code = "api_error"
    default_message = "The server refused the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int = 0,
        fields: dict[str, object] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Create the error from the server's code, status and fields."""
        super().__init__(message)
        if code:
            self.code = code
        self.status = status
        self.fields: dict[str, object] = fields or {}
        self.retry_after = retry_after

    def __repr__(self) -> str:
        """Return the class name, code and status only."""
        return f"{type(self).__name__}(code={self.code!r}, status={self.status})"


class UnauthorizedError(ApiError, AuthError):
    """Raise on 401: the token is missing, expired or refused."""

    code = "not_authenticated"
    default_message = "The server did not accept the credentials."


class DevicePendingError(AuthError):
    """Raise when the device still waits for an admin's approval."""

    code = "device_pending"
    default_message = "The device is waiting for an admin's approval."


class DeviceRevokedError(AuthError):
    """Raise when this device was revoked (401 on token, or close 4403)."""

    code = "device_revoked"
    default_message = "This device was revoked."


class NotFoundError(ApiError):
    """Raise on 404: the object is missing or not visible to this device."""

    code = "not_found"
    default_message = "Not found."


class ConflictError(ApiError):
    """Raise on a 409 other than ``device_mismatch``."""

    code = "conflict"
    default_message = "The request conflicts with the server's state."


class DeviceMismatchError(ApiError):
    """Raise on 409 ``device_mismatch``: ``fields`` has ``missing``/``extra``."""

    code = "device_mismatch"
    default_message = "The envelopes do not match the room's devices."


class StaleDevicesError(ApiError):
    """Raise on 410 ``stale_devices``: ``fields`` has ``stale``."""

    code = "stale_devices"
    default_message = "Some envelopes are addressed to revoked devices."


class PayloadTooLargeError(ApiError):
    """Raise when a message is larger than the server or the envelope allows."""

    code = "payload_too_large"
    default_message = "The message is too large."


class RateLimitedError(ApiError):
    """Raise on 429; ``retry_after`` holds the server's hint in seconds."""

    code = "rate_limited"
    default_message = "Too many requests; try again later."


class RelayClosedError(TransportError):
    """Raise when the relay socket closes; ``close_code`` says why."""

    code = "relay_closed"
    default_message = "The relay connection closed."

    def __init__(self, message: str | None = None, *, close_code: int = 0) -> None:
        """Create the error with the WebSocket close code."""
        super().__init__(message)
        self.close_code = close_code


class ProfileError(SdkError):
    """Raise when a local profile is missing, incomplete or unsafe."""

    code = "profile_error"
    default_message = "The local profile cannot be used."


class NotEnrolledError(ProfileError):
    """Raise when the profile has no enrolled device yet."""

    code = "not_enrolled"
    default_message = "This profile has no enrolled device; run 'agentvault enroll'."
