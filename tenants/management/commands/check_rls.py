"""``manage.py check_rls``: report whether tenant isolation holds."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from tenants.checks import find_problems, tenant_models


class Command(BaseCommand):
    """Print the row-level-security report for the serving role."""

    help = (
        "Check that the serving database role cannot bypass row-level security "
        "and that every tenant table has it enabled, forced and a tenant policy."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        """Print each tenant table and each problem; fail if any."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            (role,) = cursor.fetchone()
        self.stdout.write(f"Serving role: {role}")
        for model in tenant_models():
            self.stdout.write(f"  tenant table {model._meta.db_table}")

        problems = find_problems()
        for finding in problems:
            self.stderr.write(f"{finding.id}: {finding.message}")
        if problems:
            raise CommandError(f"{len(problems)} row-level security problem(s).")
        self.stdout.write(self.style.SUCCESS("Row-level security: OK"))
