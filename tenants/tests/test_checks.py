"""Startup checks and the catalogue of tenant tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import override_settings

from tenants.checks import (
    DIRECTORY_MODELS,
    find_problems,
    run_startup_checks,
    tenant_models,
)
from tenants.db import owner_connection

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def connected_as(user: str) -> Iterator[None]:
    """Point the default alias at another login role of the same server."""
    alias = connections["default"]
    saved = alias.settings_dict["USER"]
    alias.close()
    alias.close_pool()  # type: ignore[attr-defined]
    alias.settings_dict["USER"] = user
    try:
        yield
    finally:
        alias.close()
        alias.close_pool()  # type: ignore[attr-defined]
        alias.settings_dict["USER"] = saved


def test_the_app_role_passes_every_check() -> None:
    assert find_problems() == []
    run_startup_checks()


def test_every_table_with_a_tenant_column_is_a_checked_tenant_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name = 'tenant_id'"
        )
        with_column = {row[0] for row in cursor.fetchall()}
    checked = {model._meta.db_table for model in tenant_models()}
    directories = {"tenants_user"}

    assert with_column - directories == checked
    assert {label for label in DIRECTORY_MODELS} == {"tenants.user"}
    assert len(checked) >= 3


def test_the_owner_role_fails_the_checks() -> None:
    with owner_connection():
        problems = find_problems()
    ids = {finding.id for finding in problems}
    assert "tenants.E004" in ids


def test_startup_refuses_the_owner_role_when_debug_is_off() -> None:
    with owner_connection(), override_settings(DEBUG=False):
        with pytest.raises(ImproperlyConfigured, match="owns"):
            run_startup_checks()


@pytest.mark.skipif(
    not settings.EMBEDDED, reason="needs the embedded cluster's superuser"
)
def test_a_superuser_fails_the_checks() -> None:
    with connected_as("postgres"):
        ids = {finding.id for finding in find_problems()}
    assert "tenants.E001" in ids


def test_a_table_without_forced_rls_is_reported() -> None:
    with owner_connection(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE tenants_member NO FORCE ROW LEVEL SECURITY")
    try:
        problems = find_problems()
    finally:
        with owner_connection(), connection.cursor() as cursor:
            cursor.execute("ALTER TABLE tenants_member FORCE ROW LEVEL SECURITY")
    assert [f.id for f in problems] == ["tenants.E005"]
    assert "tenants_member" in problems[0].message


def test_check_rls_command_reports_ok_and_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("check_rls")
    assert "Row-level security: OK" in capsys.readouterr().out

    with owner_connection():
        with pytest.raises(CommandError, match="row-level security problem"):
            call_command("check_rls")
