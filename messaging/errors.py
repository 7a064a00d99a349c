"""Errors of the messaging API, each with a stable code."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

from agentvault.errors import ApiError, ForbiddenError, NotFoundError


class RoomNotFoundError(NotFoundError):
    """The room is missing, in another tenant, or not visible to the caller."""


class MemberNotFoundError(NotFoundError):
    """The member is missing or belongs to another tenant."""


class DeviceRequiredError(ForbiddenError):
    """The call needs a device token (an OIDC member has no device)."""

    code = "device_required"
    template = _("This call needs a device token.")


class DeviceMismatchError(ApiError):
    """The envelopes do not cover exactly the room's active recipient devices."""

    code = "device_mismatch"
    status = 409
    template = _(
        "The envelopes must cover every active device of the room except the "
        "sending one, once each."
    )


class StaleDevicesError(ApiError):
    """Some envelopes are addressed to revoked devices."""

    code = "stale_devices"
    status = 410
    template = _("Some envelopes are addressed to revoked devices.")


class DuplicateDeviceError(ApiError):
    """Two envelopes name the same device."""

    code = "duplicate_device"
    status = 400
    template = _("Each device may receive only one envelope per message.")


class PayloadTooLargeError(ApiError):
    """A ciphertext or the whole request is over its size limit."""

    code = "payload_too_large"
    status = 413
    template = _("The message is larger than the server accepts.")


class RecipientQueueFullError(ApiError):
    """A recipient device has too many unacknowledged envelopes queued."""

    code = "recipient_queue_full"
    status = 507
    template = _("A recipient's queue is full; try again after it catches up.")


class SendRateLimitedError(ApiError):
    """The sending device is over its send rate."""

    code = "rate_limited"
    status = 429
    template = _("Too many messages; try again later.")
