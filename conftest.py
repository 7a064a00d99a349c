"""Test set-up shared by every test: real PostgreSQL, the app role, two tenants.

- The test database is created and migrated as the owner role, exactly as in
  production; the tests then connect as the app role, so row-level security
  is in force in every test that touches the database.
- Transactional tests are cleaned up by the owner role with TRUNCATE, since
  the app role may not truncate (and the audit table refuses it by trigger).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import TransactionTestCase

from tenants.db import owner_connection

# Tables Django fills at migrate time and a flush must keep.
_KEEP = {"django_migrations", "django_content_type", "auth_permission"}


def _truncate_as_owner(self: TransactionTestCase) -> None:
    with owner_connection():
        connection = connections["default"]
        with connection.cursor() as cursor:
            tables = [
                name
                for name in connection.introspection.table_names(cursor)
                if name not in _KEEP
            ]
            quoted = ", ".join(connection.ops.quote_name(name) for name in tables)
            trigger = "audit_auditevent_no_truncate"
            cursor.execute(f"ALTER TABLE audit_auditevent DISABLE TRIGGER {trigger}")
            cursor.execute(f"TRUNCATE {quoted} CASCADE")
            cursor.execute(f"ALTER TABLE audit_auditevent ENABLE TRIGGER {trigger}")


TransactionTestCase._fixture_teardown = _truncate_as_owner  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_keepdb: bool,
) -> Iterator[None]:
    """Create the test database as the owner role, then serve as the app role."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock(), owner_connection():
        config = setup_databases(
            verbosity=request.config.option.verbose,
            interactive=False,
            keepdb=django_db_keepdb,
        )

    yield

    with django_db_blocker.unblock(), owner_connection():
        # A connection handed back to a closing pool can outlive it for a
        # moment (psycopg-pool resets it in a worker thread); end such
        # stragglers so the test database can be dropped.
        with connections["default"]._nodb_cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [connections["default"].settings_dict["NAME"]],
            )
        teardown_databases(config, verbosity=0, keepdb=django_db_keepdb)


pytest_plugins = ["tests.fixtures"]
