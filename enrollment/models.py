"""Devices, invites, device challenges and the prekey directory.

Every table here holds tenant data: each has a ``tenant`` foreign key and,
in its migration, forced row-level security with the tenant policy.
"""

from __future__ import annotations

import datetime
import uuid

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from tenants.models import Member, Tenant


class DeviceQuerySet(models.QuerySet["Device"]):
    """Queries over devices."""

    def active(self) -> DeviceQuerySet:
        """Return approved, unrevoked devices."""
        return self.filter(status=Device.Status.ACTIVE)


class Device(models.Model):
    """An enrolled client of a member, with its own Ed25519 identity key.

    A device never changes member or identity key; enrolling again makes a
    new device.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending approval")
        ACTIVE = "active", _("Active")
        REVOKED = "revoked", _("Revoked")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="devices")
    name = models.CharField(max_length=200)
    identity_key = models.BinaryField(max_length=32, editable=False)
    fingerprint = models.CharField(max_length=64, editable=False)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "identity_key"], name="device_unique_identity_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class InviteQuerySet(models.QuerySet["Invite"]):
    """Queries over invites."""

    def open(self, *, now: datetime.datetime | None = None) -> InviteQuerySet:
        """Return invites that can still be redeemed."""
        return self.filter(
            used_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=now or timezone.now(),
        )


class Invite(models.Model):
    """A single-use invitation to enroll one device.

    Either for a new member (``member_name``, ``member_kind``,
    ``member_role``; the member is created when the invite is redeemed) or
    for another device of an existing ``member``. Only a keyed hash of the
    token's secret is stored (see ``enrollment.invite_tokens``).
    """

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        USED = "used", _("Used")
        REVOKED = "revoked", _("Revoked")
        EXPIRED = "expired", _("Expired")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    lookup = models.CharField(max_length=16, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    member = models.ForeignKey(
        Member,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        help_text=_("Existing member this invite adds a device to."),
    )
    member_name = models.CharField(max_length=200, blank=True)
    member_kind = models.CharField(
        max_length=16, choices=Member.Kind.choices, blank=True
    )
    member_role = models.CharField(
        max_length=16, choices=Member.Role.choices, blank=True
    )
    created_by = models.ForeignKey(
        Member, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    device = models.ForeignKey(
        Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InviteQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "lookup"], name="invite_unique_lookup"
            ),
            models.CheckConstraint(
                condition=models.Q(member__isnull=False)
                | (
                    ~models.Q(member_name="")
                    & ~models.Q(member_kind="")
                    & ~models.Q(member_role="")
                ),
                name="invite_names_its_member",
            ),
        ]

    def __str__(self) -> str:
        return f"invite {self.pk} ({self.status})"

    @property
    def status(self) -> str:
        """Return open, used, revoked or expired."""
        if self.used_at is not None:
            return self.Status.USED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.Status.OPEN


class DeviceChallenge(models.Model):
    """A single-use challenge a device signs to obtain an access token.

    Only the SHA-256 of the random challenge is stored.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "digest"], name="challenge_unique_digest"
            )
        ]

    def __str__(self) -> str:
        return f"challenge {self.pk} of {self.device_id}"


class SignedPrekey(models.Model):
    """The current signed prekey of a device (X25519, signed by its identity)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device = models.OneToOneField(
        Device, on_delete=models.CASCADE, related_name="signed_prekey"
    )
    key_id = models.PositiveBigIntegerField()
    public_key = models.BinaryField(max_length=32)
    signature = models.BinaryField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"signed prekey {self.key_id} of {self.device_id}"


class OneTimePrekey(models.Model):
    """A one-time prekey waiting to be handed out, oldest first, exactly once."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="one_time_prekeys"
    )
    key_id = models.PositiveBigIntegerField()
    public_key = models.BinaryField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "key_id"], name="one_time_prekey_unique_id"
            )
        ]
        indexes = [models.Index(fields=["device", "id"], name="one_time_prekey_queue")]

    def __str__(self) -> str:
        return f"one-time prekey {self.key_id} of {self.device_id}"


class ClaimedPrekeyId(models.Model):
    """A tombstone: a one-time prekey id of a device that was handed out.

    Such an id is never accepted again from that device, so a re-upload
    cannot bring a consumed key back.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    key_id = models.PositiveBigIntegerField()
    claimed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "key_id"], name="claimed_prekey_unique_id"
            )
        ]

    def __str__(self) -> str:
        return f"claimed prekey {self.key_id} of {self.device_id}"
