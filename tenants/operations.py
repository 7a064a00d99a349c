"""Migration operations for row-level security and the app role's grants."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import migrations

from tenants.db import role_settings

POLICY_NAME = "tenant_isolation"
TENANT_EXPRESSION = (
    "(SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"
)


def app_role() -> str:
    """Return the name of the role that serves requests."""
    return str(role_settings("app")["USER"])


def operator_role() -> str | None:
    """Return the name of the operator role, if one is configured."""
    if not settings.DATABASE_ROLES.get("operator"):
        return None
    return str(role_settings("operator")["USER"])


class TableOperation(migrations.operations.base.Operation):
    """Base of operations that run SQL on one model's table and keep state."""

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Change nothing in the model state."""

    def _table(self, app_label: str, state: Any) -> str:
        model = state.apps.get_model(app_label, self.model_name)
        return str(model._meta.db_table)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """Return how to rebuild this operation."""
        return self.__class__.__qualname__, [], {"model_name": self.model_name}


class EnableTenantRLS(TableOperation):
    """Enable and force row-level security on a tenant table, with its policy.

    The policy lets the app role see and write only rows whose tenant column
    equals the transaction's ``app.current_tenant_id``; with no tenant set it
    sees nothing. ``FORCE`` makes the owner subject to it too.
    """

    def __init__(self, model_name: str, column: str = "tenant_id") -> None:
        super().__init__(model_name)
        self.column = column

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Enable, force and create the policy."""
        table = schema_editor.quote_name(self._table(app_label, to_state))
        column = schema_editor.quote_name(self.column)
        role = schema_editor.quote_name(app_role())
        condition = f"{column} = {TENANT_EXPRESSION}"
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(
            f"CREATE POLICY {POLICY_NAME} ON {table} AS PERMISSIVE FOR ALL "
            f"TO {role} USING ({condition}) WITH CHECK ({condition})"
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Drop the policy and disable row-level security."""
        table = schema_editor.quote_name(self._table(app_label, from_state))
        schema_editor.execute(f"DROP POLICY IF EXISTS {POLICY_NAME} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        """Describe the operation for ``migrate --plan``."""
        return f"Enable row-level security on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        """Name fragment for auto-named migrations."""
        return f"rls_{self.model_name.lower()}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """Return how to rebuild this operation."""
        name, args, kwargs = super().deconstruct()
        if self.column != "tenant_id":
            kwargs["column"] = self.column
        return name, args, kwargs


class GrantAppRole(migrations.operations.base.Operation):
    """Grant the app role row access on present and future tables.

    Tables created by the owner from now on are readable and writable by the
    app role through default privileges; tables created before (Django's own)
    get the same grants now. The app role gets no TRUNCATE, and owns nothing.
    """

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Change nothing in the model state."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Grant on existing objects and set default privileges."""
        rows = "SELECT, INSERT, UPDATE, DELETE"
        for name in filter(None, [app_role(), operator_role()]):
            role = schema_editor.quote_name(name)
            defaults = "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT"
            for statement in (
                f"GRANT USAGE ON SCHEMA public TO {role}",
                f"GRANT {rows} ON ALL TABLES IN SCHEMA public TO {role}",
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
                f"{defaults} {rows} ON TABLES TO {role}",
                f"{defaults} USAGE, SELECT ON SEQUENCES TO {role}",
            ):
                schema_editor.execute(statement)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Leave grants in place: revoking them would break a running server."""

    def describe(self) -> str:
        """Describe the operation for ``migrate --plan``."""
        return "Grant the app role row access on tables"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """Return how to rebuild this operation."""
        return self.__class__.__qualname__, [], {}
