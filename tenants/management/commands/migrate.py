"""``migrate``, connected as the owner role.

The server's own connection is the app role, which owns nothing and cannot
create tables. Migrations run as the owner role (``MIGRATE_DATABASE_URL``, or
the embedded cluster's owner), which then grants row access to the app role.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrate

from tenants.db import owner_connection


class Command(DjangoMigrate):
    """Apply migrations as the owner role."""

    help = "Apply migrations, connected as the database owner role."

    def get_check_kwargs(self, options: dict[str, Any]) -> Any:
        """Run the project's checks without the database-tagged ones.

        The row-level-security check would report the very tables this run is
        about to create; ``check_rls`` is the check to run afterwards.
        """
        kwargs = dict(super().get_check_kwargs(options))
        kwargs.pop("databases", None)
        return kwargs

    def handle(self, *args: Any, **options: Any) -> None:
        """Run Django's migrate with the owner role's credentials."""
        with owner_connection(using=options["database"]):
            super().handle(*args, **options)
