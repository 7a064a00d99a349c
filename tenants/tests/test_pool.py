"""The connection pool forgets the tenant of a returned connection."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection
from psycopg_pool import ConnectionPool

from tenants.db import reset_tenant_setting

pytestmark = pytest.mark.django_db(transaction=True)


def _conninfo() -> str:
    params = connection.get_connection_params()
    params.pop("pool", None)
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    return " ".join(f"{key}={value}" for key, value in params.items() if value)


def test_the_configured_pool_resets_the_tenant_setting() -> None:
    pool_options = settings.DATABASES["default"]["OPTIONS"]["pool"]
    assert pool_options["reset"] is reset_tenant_setting


def test_a_connection_returned_to_the_pool_carries_no_tenant() -> None:
    pool = ConnectionPool(
        _conninfo(), min_size=1, max_size=1, reset=reset_tenant_setting, open=True
    )
    try:
        with pool.connection() as conn:
            first_pid = conn.info.backend_pid
            # A session-level set, the mistake the reset guards against.
            conn.execute(
                "SELECT set_config('app.current_tenant_id', "
                "'00000000-0000-0000-0000-000000000001', false)"
            )
        with pool.connection() as conn:
            assert conn.info.backend_pid == first_pid
            value = conn.execute(
                "SELECT current_setting('app.current_tenant_id', true)"
            ).fetchone()
        assert value == ("",)
    finally:
        pool.close()


def test_without_the_reset_the_setting_would_leak() -> None:
    """The control case: shows the test above can fail."""
    pool = ConnectionPool(_conninfo(), min_size=1, max_size=1, open=True)
    try:
        with pool.connection() as conn:
            conn.execute(
                "SELECT set_config('app.current_tenant_id', "
                "'00000000-0000-0000-0000-000000000001', false)"
            )
        with pool.connection() as conn:
            value = conn.execute(
                "SELECT current_setting('app.current_tenant_id', true)"
            ).fetchone()
        assert value == ("00000000-0000-0000-0000-000000000001",)
    finally:
        pool.close()
