"""Checking a tenant's audit chain for breaks."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

from audit.models import GENESIS_HASH, AuditEvent


@dataclasses.dataclass(frozen=True)
class ChainBreak:
    """The first event whose link or hash does not hold."""

    event_id: int
    reason: str


@dataclasses.dataclass(frozen=True)
class ChainReport:
    """The outcome of walking one tenant's chain."""

    tenant_id: uuid.UUID
    events: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        """Return whether the whole chain holds."""
        return self.first_break is None


def iter_events(tenant_id: uuid.UUID) -> Iterator[AuditEvent]:
    """Yield a tenant's events in chain order, in batches."""
    return AuditEvent.objects.filter(tenant_id=tenant_id).order_by("id").iterator(2000)


def get_chain_report(tenant_id: uuid.UUID) -> ChainReport:
    """Walk a tenant's chain and report the first broken event, if any.

    Must run in the tenant's scope.
    """
    expected_prev = GENESIS_HASH
    count = 0
    for event in iter_events(tenant_id):
        count += 1
        if event.prev_hash != expected_prev:
            return ChainReport(
                tenant_id, count, ChainBreak(event.pk, "previous hash does not link")
            )
        if event.compute_hash() != event.hash:
            return ChainReport(
                tenant_id, count, ChainBreak(event.pk, "content does not match hash")
            )
        expected_prev = event.hash
    return ChainReport(tenant_id, count, None)
