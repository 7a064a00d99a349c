"""Database-role plumbing: the pool reset and switching to the owner role.

The server connects as the app role. Migrations and test-database set-up need
the owner role; ``owner_connection`` points a connection alias at the owner's
credentials for the duration of a block. Nothing here imports models, so the
settings module may import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

TENANT_SETTING = "app.current_tenant_id"
_CREDENTIAL_KEYS = ("USER", "PASSWORD", "HOST", "PORT")


def reset_tenant_setting(connection: Any) -> None:
    """Clear the tenant variable on a connection going back to the pool.

    The tenant is only ever set transaction-locally, so this is a second
    guard. It resets that one variable: ``RESET ALL`` would drop the time zone
    Django set at connect time and ``DISCARD ALL`` would drop a role.
    """
    connection.execute(f"RESET {TENANT_SETTING}")
    if not connection.autocommit:
        # The pool discards a connection its reset leaves in a transaction.
        connection.commit()


def role_settings(role: str) -> dict[str, Any]:
    """Return the connection settings of ``role`` ("owner" or "operator")."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    config = settings.DATABASE_ROLES.get(role)
    if not config:
        raise ImproperlyConfigured(
            f"No {role} database role is configured: set "
            f"{'MIGRATE' if role == 'owner' else 'OPERATOR'}_DATABASE_URL."
        )
    return dict(config)


@contextlib.contextmanager
def role_connection(role: str, *, using: str = "default") -> Iterator[None]:
    """Run the block with alias ``using`` connected as ``role``.

    The database name is kept (it may be a test database); user, password,
    host and port come from the role's configured URL. The alias's pool is
    closed on the way in and out, so no pooled connection crosses roles.
    """
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    target = role_settings(role)
    connection = connections[using]
    assert isinstance(connection, DatabaseWrapper)
    saved = {key: connection.settings_dict.get(key) for key in _CREDENTIAL_KEYS}

    connection.close()
    # django-stubs 5.2 lacks the pool API added in Django 5.1.
    connection.close_pool()  # type: ignore[attr-defined]
    for key in _CREDENTIAL_KEYS:
        connection.settings_dict[key] = target.get(key, "")
    try:
        yield
    finally:
        connection.close()
        connection.close_pool()  # type: ignore[attr-defined]
        connection.settings_dict.update(saved)


def owner_connection(
    *, using: str = "default"
) -> contextlib.AbstractContextManager[None]:
    """Run the block with alias ``using`` connected as the owner role."""
    return role_connection("owner", using=using)
