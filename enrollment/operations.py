"""Migration operation for the device directory function.

The challenge request names only a device, so the tenant is not known yet
and row-level security hides every device. ``enrollment_device_tenant(uuid)``
answers that one question, the tenant id of a device id, and nothing else:

- ``SECURITY DEFINER`` and owned by the operator role (``BYPASSRLS``), so it
  sees every device; ``search_path`` is pinned so no caller can shadow
  ``enrollment_device`` or an operator.
- ``EXECUTE`` is revoked from ``PUBLIC`` and granted to the app role only.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations

from tenants.operations import app_role, operator_role

FUNCTION = "enrollment_device_tenant"
SIGNATURE = f"{FUNCTION}(uuid)"

_BODY = f"""
CREATE OR REPLACE FUNCTION {SIGNATURE} RETURNS uuid
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    SELECT tenant_id FROM public.enrollment_device WHERE id = $1
$$
"""


class CreateDeviceTenantFunction(migrations.operations.base.Operation):
    """Create the definer function that maps a device id to its tenant id."""

    reversible = True
    reduces_to_sql = False

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Change nothing in the model state."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Create the function and hand it to the operator role."""
        operator = operator_role()
        if not operator:
            raise ImproperlyConfigured(
                "Set OPERATOR_DATABASE_URL: the device directory function is "
                "owned by the operator role (BYPASSRLS)."
            )
        owner = schema_editor.quote_name(operator)
        app = schema_editor.quote_name(app_role())
        schema_editor.execute(_BODY)

        # ALTER ... OWNER needs CREATE on the schema for the new owner; grant
        # it for the moment of the hand-over only, unless it was there.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT has_schema_privilege(%s, 'public', 'CREATE')", [operator]
            )
            (had_create,) = cursor.fetchone()
        if not had_create:
            schema_editor.execute(f"GRANT CREATE ON SCHEMA public TO {owner}")
        schema_editor.execute(f"ALTER FUNCTION {SIGNATURE} OWNER TO {owner}")
        if not had_create:
            schema_editor.execute(f"REVOKE CREATE ON SCHEMA public FROM {owner}")

        schema_editor.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
        schema_editor.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO {app}")

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Drop the function."""
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")

    def describe(self) -> str:
        """Describe the operation for ``migrate --plan``."""
        return f"Create the definer function {SIGNATURE}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """Return how to rebuild this operation."""
        return self.__class__.__qualname__, [], {}
