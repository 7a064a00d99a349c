"""Device model: an enrolled client of a member."""

from __future__ import annotations

import uuid

from django.db import models
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
