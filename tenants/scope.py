"""The tenant scope: a transaction whose first statement names the tenant.

Row-level-security policies compare each row's ``tenant_id`` with the
transaction-local variable ``app.current_tenant_id``. ``tenant_scope`` opens a
transaction (or a savepoint inside one), sets the variable with
``set_config(..., true)`` and restores the previous value on the way out,
because a transaction-local setting made inside a savepoint outlives the
savepoint's release.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from django.db import connections, transaction

from tenants.db import TENANT_SETTING


class TenantScopeError(RuntimeError):
    """Raised when code tries to switch tenants inside a tenant scope."""


def _as_uuid(tenant_id: uuid.UUID | str) -> uuid.UUID:
    return tenant_id if isinstance(tenant_id, uuid.UUID) else uuid.UUID(str(tenant_id))


def current_tenant_id(*, using: str = "default") -> uuid.UUID | None:
    """Return the tenant of the current transaction, or None outside a scope."""
    connection = connections[using]
    if not connection.in_atomic_block:
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [TENANT_SETTING])
        (value,) = cursor.fetchone()
    return uuid.UUID(value) if value else None


def _set(cursor: object, value: str) -> None:
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT set_config(%s, %s, true)", [TENANT_SETTING, value]
    )


@contextlib.contextmanager
def tenant_scope(
    tenant_id: uuid.UUID | str,
    *,
    using: str = "default",
    allow_switch: bool = False,
) -> Iterator[uuid.UUID]:
    """Run the block in a transaction scoped to ``tenant_id``.

    Nesting the same tenant is free. Entering another tenant's scope inside a
    scope raises ``TenantScopeError`` unless ``allow_switch`` is set (an
    operator command walking tenants); the outer tenant is restored on exit.
    """
    tenant = _as_uuid(tenant_id)
    connection = connections[using]
    # The outermost scope opens the transaction: no tenant can be set yet
    # (settings are transaction-local and the pool resets the variable), and
    # the setting ends with the transaction, so there is nothing to read or
    # restore: one statement instead of three.
    outermost = not connection.in_atomic_block

    with transaction.atomic(using=using):
        with connection.cursor() as cursor:
            previous = ""
            if not outermost:
                cursor.execute("SELECT current_setting(%s, true)", [TENANT_SETTING])
                previous = cursor.fetchone()[0] or ""
            if previous and previous != str(tenant) and not allow_switch:
                raise TenantScopeError("A tenant scope cannot switch tenants.")
            if previous != str(tenant):
                _set(cursor, str(tenant))

        yield tenant

        # Reached only when the block succeeded; on an error the savepoint
        # rollback already reverts the setting. A transaction marked for
        # rollback (a failed response) takes the setting with it.
        if not outermost and previous != str(tenant) and not connection.needs_rollback:
            with connection.cursor() as cursor:
                _set(cursor, previous)
