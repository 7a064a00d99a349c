"""Writing audit events: the one entry point other apps use is ``audit.record``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import connection
from django.utils import timezone

from agentvault import context
from audit.models import GENESIS_HASH, AuditEvent
from tenants.scope import current_tenant_id

logger = logging.getLogger(__name__)


class AuditScopeError(RuntimeError):
    """Raised when an audit event is recorded outside any tenant scope."""


def _kind_and_id(subject: Any) -> tuple[str, str]:
    """Return the (kind, id) plain values naming an actor or target."""
    if subject is None:
        return "", ""
    if isinstance(subject, tuple):
        kind, ident = subject
        return str(kind), str(ident)
    if isinstance(subject, str):
        return subject, ""
    from agentvault.auth.principal import Principal

    if isinstance(subject, Principal):
        if subject.device is not None:
            return "device", str(subject.device_id)
        return "member", str(subject.member_id)
    kind = type(subject)._meta.model_name  # a model instance
    return kind, str(subject.pk)


def _lock_key(tenant_id: uuid.UUID) -> int:
    # Advisory locks take a signed 64-bit key; the tenant's first 8 bytes do.
    return int.from_bytes(tenant_id.bytes[:8], "big", signed=True)


def do_record_event(
    action: str,
    *,
    actor: Any = None,
    target: Any = None,
    details: dict[str, Any] | None = None,
    client_ip: str | None = None,
    correlation_id: str | None = None,
) -> AuditEvent:
    """Append an event to the current tenant's hash chain.

    Runs inside the caller's tenant scope and transaction. The tenant's chain
    is serialised with a transaction-level advisory lock, so concurrent
    writers each link to the event committed before them.
    """
    tenant_id = current_tenant_id()
    if tenant_id is None:
        raise AuditScopeError("audit.record() needs a tenant scope.")

    actor_kind, actor_id = _kind_and_id(actor or "system")
    target_kind, target_id = _kind_and_id(target)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(tenant_id)])
    previous = (
        AuditEvent.objects.filter(tenant_id=tenant_id)
        .order_by("-id")
        .values_list("hash", flat=True)
        .first()
    )

    event = AuditEvent(
        tenant_id=tenant_id,
        occurred_at=timezone.now(),
        actor_kind=actor_kind,
        actor_id=actor_id,
        action=action,
        target_kind=target_kind,
        target_id=target_id,
        client_ip=client_ip or context.client_ip.get(),
        correlation_id=correlation_id or context.correlation_id.get() or "",
        details=details or {},
        prev_hash=previous or GENESIS_HASH,
    )
    event.hash = event.compute_hash()
    event.save(force_insert=True)
    logger.info("Audit %s on %s %s", action, target_kind or "-", target_id or "-")
    return event
