"""``manage.py create_tenant``: a tenant, its first owner admin and console login."""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from tenants.actions import TenantExistsError, do_create_tenant
from tenants.models import User


class Command(BaseCommand):
    """Create a tenant with an owner admin who can sign in to the console."""

    help = "Create a tenant and its first owner admin with a console login."

    def add_arguments(self, parser: CommandParser) -> None:
        """Declare the command's options."""
        parser.add_argument("name", help="Display name of the tenant.")
        parser.add_argument("--slug", help="Short unique name (default: from name).")
        parser.add_argument(
            "--admin", required=True, help="Console username of the owner admin."
        )
        parser.add_argument(
            "--password-file",
            help="Read the admin password from this file (default: generate one "
            "and print it once; '-' prompts).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Validate the input, then create everything in one transaction."""
        name = options["name"].strip()
        slug = options["slug"] or slugify(name)
        if not name or not slug:
            raise CommandError("Give the tenant a name with letters or digits.")
        if User.objects.filter(username=options["admin"]).exists():
            raise CommandError(f"A console user {options['admin']!r} exists already.")

        password = self._password(options["password_file"])
        try:
            tenant, owner, password = do_create_tenant(
                name=name,
                slug=slug,
                admin_username=options["admin"],
                admin_password=password,
            )
        except TenantExistsError:
            raise CommandError(f"A tenant with slug {slug!r} exists already.") from None

        self.stdout.write(f"Tenant {tenant.name} ({tenant.slug}): {tenant.pk}")
        self.stdout.write(f"Owner admin member: {owner.pk}")
        self.stdout.write(f"Console login: {options['admin']}")
        if options["password_file"] is None:
            self.stdout.write(f"Console password (shown once): {password}")

    def _password(self, source: str | None) -> str | None:
        if source is None:
            return None
        if source == "-":
            password = getpass.getpass("Console password: ")
        else:
            try:
                with open(source) as handle:
                    password = handle.read().strip()
            except OSError as exc:
                raise CommandError(f"Cannot read {source}: {exc.strerror}.") from None
        try:
            validate_password(password)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        return password
