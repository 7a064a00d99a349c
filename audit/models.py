"""The AuditEvent model: one row per administrative or security act."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import models

from tenants.models import Tenant

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    """An append-only, per-tenant hash-chained record of one act.

    Actor and target are plain values, not foreign keys, so deleting a member
    or device never rewrites history. ``details`` holds ids and enums only.
    The database refuses updates, deletes and truncation (see the migration).
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, related_name="+")
    occurred_at = models.DateTimeField()
    actor_kind = models.CharField(max_length=32)
    actor_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_kind = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    correlation_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["tenant", "id"], name="audit_tenant_id_idx")]

    def __str__(self) -> str:
        return f"{self.action} #{self.pk}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Insert only: an existing event is never changed."""
        if not self._state.adding:
            raise ValueError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        """Refuse: audit events are never deleted."""
        raise ValueError("Audit events are append-only.")

    def canonical(self) -> bytes:
        """Return the bytes the chain hashes for this event."""
        body = {
            "tenant": str(self.tenant_id),
            "occurred_at": self.occurred_at.isoformat(),
            "actor": [self.actor_kind, self.actor_id],
            "action": self.action,
            "target": [self.target_kind, self.target_id],
            "client_ip": self.client_ip or "",
            "correlation_id": self.correlation_id,
            "details": self.details,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def compute_hash(self) -> str:
        """Return SHA-256 over the previous hash and this event's canonical form."""
        return hashlib.sha256(self.prev_hash.encode() + self.canonical()).hexdigest()


class SecurityAlert(AuditEvent):
    """The security alerts among audit events (``security.*``), for the console."""

    class Meta:
        proxy = True
        verbose_name = "security alert"
        verbose_name_plural = "security alerts"
