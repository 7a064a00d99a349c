"""Migration operation that makes a table append-only for every role."""

from __future__ import annotations

from typing import Any

from tenants.operations import TableOperation, app_role, operator_role

_FUNCTION = "audit_refuse_change"


class MakeAppendOnly(TableOperation):
    """Refuse UPDATE, DELETE and TRUNCATE on a table, by grant and by trigger.

    - The app and operator roles lose UPDATE, DELETE and TRUNCATE.
    - Row triggers refuse UPDATE and DELETE from anyone, and a statement
      trigger refuses TRUNCATE (row triggers do not see it).
    """

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
