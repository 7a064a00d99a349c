"""Checks that the database enforces tenant isolation for the serving role.

- The serving role is not a superuser, has no ``BYPASSRLS`` and owns no
  tenant table (an owner can switch row-level security off).
- Every tenant table (a model with a ``tenant`` foreign key) has row-level
  security enabled and forced, and the tenant policy for the serving role.

They run as Django system checks (``manage.py check --database default``),
in ``manage.py check_rls``, and when the ASGI application starts, where any
failure stops the process unless ``DEBUG`` is on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.models import Model

from tenants.models import Tenant
from tenants.operations import POLICY_NAME, app_role

logger = logging.getLogger(__name__)

# Global directories consulted before a tenant is known. They map an identity
# to a tenant and hold no tenant data of their own.
DIRECTORY_MODELS = {"tenants.user"}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found by the checks."""

    id: str
    message: str


def tenant_models() -> list[type[Model]]:
    """Return every concrete model with a ``tenant`` foreign key."""
    found = []
    for model in apps.get_models():
        label = model._meta.label_lower
        if model._meta.proxy or not model._meta.managed or label in DIRECTORY_MODELS:
            continue
        field = next(
            (f for f in model._meta.concrete_fields if f.name == "tenant"), None
        )
        if field is not None and field.related_model is Tenant:
            found.append(model)
    return found


def find_problems(using: str = "default") -> list[Finding]:
    """Return what makes the connection ``using`` unsafe to serve tenants."""
    connection = connections[using]
    problems: list[Finding] = []
    tables = {model._meta.db_table: model for model in tenant_models()}

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
        role, superuser, bypass = cursor.fetchone()
        if superuser:
            problems.append(
                Finding("tenants.E001", f"The serving role {role} is a superuser.")
            )
        if bypass:
            problems.append(
                Finding("tenants.E002", f"The serving role {role} has BYPASSRLS.")
            )

        cursor.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner), c.relrowsecurity, "
            "c.relforcerowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relname = ANY(%s)",
            [list(tables)],
        )
        catalogue = {row[0]: row[1:] for row in cursor.fetchall()}

        cursor.execute(
            "SELECT tablename, roles::text[], qual, with_check FROM pg_policies "
            "WHERE schemaname = current_schema() AND policyname = %s",
            [POLICY_NAME],
        )
        policies = {row[0]: row[1:] for row in cursor.fetchall()}

    for table in sorted(tables):
        if table not in catalogue:
            problems.append(Finding("tenants.E003", f"Table {table} does not exist."))
            continue
        owner, enabled, forced = catalogue[table]
        if owner == role:
            problems.append(
                Finding("tenants.E004", f"The serving role {role} owns {table}.")
            )
        if not enabled or not forced:
            problems.append(
                Finding(
                    "tenants.E005",
                    f"Row-level security is not enabled and forced on {table}.",
                )
            )
        policy = policies.get(table)
        if policy is None:
            problems.append(
                Finding("tenants.E006", f"Table {table} has no tenant policy.")
            )
            continue
        roles, qual, with_check = policy
        expected_role = app_role()
        if expected_role not in roles or "app.current_tenant_id" not in (qual or ""):
            problems.append(
                Finding(
                    "tenants.E007",
                    f"The tenant policy on {table} does not apply to {expected_role} "
                    "or does not compare app.current_tenant_id.",
                )
            )
        if "app.current_tenant_id" not in (with_check or ""):
            problems.append(
                Finding(
                    "tenants.E008", f"The tenant policy on {table} has no WITH CHECK."
                )
            )
    return problems


@checks.register(checks.Tags.database)
def check_row_level_security(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Report isolation problems as Django system-check errors."""
    if not databases or "default" not in databases:
        return []
    return [checks.Error(finding.message, id=finding.id) for finding in find_problems()]


def run_startup_checks() -> None:
    """Refuse to start serving on an unsafe database role unless ``DEBUG``."""
    problems = find_problems()
    connections["default"].close()
    if not problems:
        logger.info("Row-level security checks passed")
        return
    for finding in problems:
        logger.error("%s: %s", finding.id, finding.message)
    if not settings.DEBUG:
        raise ImproperlyConfigured(
            "Refusing to serve: "
            + "; ".join(finding.message for finding in problems)
            + " Serve as the app role (DATABASE_URL) and run migrations as the "
            "owner role (MIGRATE_DATABASE_URL)."
        )
