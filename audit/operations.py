"""Migration operation that makes a table append-only for every role."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from tenants.operations import app_role, operator_role

_FUNCTION = "audit_refuse_change"


class MakeAppendOnly(migrations.operations.base.Operation):
    """Refuse UPDATE, DELETE and TRUNCATE on a table, by grant and by trigger.

    - The app and operator roles lose UPDATE, DELETE and TRUNCATE.
    - Row triggers refuse UPDATE and DELETE from anyone, and a statement
      trigger refuses TRUNCATE (row triggers do not see it).
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Change nothing in the model state."""

    def _table(self, app_label: str, state: Any) -> str:
        model = state.apps.get_model(app_label, self.model_name)
        return str(model._meta.db_table)

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Revoke the grants and install the triggers."""
        raw = self._table(app_label, to_state)
        table = schema_editor.quote_name(raw)
        for role in filter(None, [app_role(), operator_role()]):
            schema_editor.execute(
                f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} "
                f"FROM {schema_editor.quote_name(role)}"
            )
        schema_editor.execute(
            f"""
            CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'audit events are append-only (%% refused on %%)',
                TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        schema_editor.execute(
            f"CREATE TRIGGER {raw}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {_FUNCTION}()"
        )
        schema_editor.execute(
            f"CREATE TRIGGER {raw}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTION}()"
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Drop the triggers (the table is dropped next when unapplying)."""
        raw = self._table(app_label, from_state)
        table = schema_editor.quote_name(raw)
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {raw}_no_change ON {table}")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {raw}_no_truncate ON {table}")

    def describe(self) -> str:
        """Describe the operation for ``migrate --plan``."""
        return f"Make {self.model_name} append-only"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """Return how to rebuild this operation."""
        return self.__class__.__qualname__, [], {"model_name": self.model_name}
