"""``manage.py create_tenant``: a tenant, its first owner admin and console login."""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.utils.text import slugify

from tenants.actions import TenantExistsError, do_create_tenant
from tenants.models import Tenant, User


def _check(model: type[models.Model], name: str, value: str, label: str) -> None:
    """Run the model field's validators (format, length) on ``value``.

    The database would refuse a value that is too long only with a raw
    ``DataError``, and would store a malformed slug or username as is.
    """
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    try:
        field.run_validators(value)
    except ValidationError as exc:
        raise CommandError(f"{label}: {' '.join(exc.messages)}") from None


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
        admin = options["admin"]
        if not name or not slug:
            raise CommandError("Give the tenant a name with letters or digits.")
        if not admin.strip():
            raise CommandError("Give the admin a username.")
        _check(Tenant, "name", name, "Tenant name")
        if options["slug"]:
            _check(Tenant, "slug", slug, f"Slug {slug!r}")
        else:
            _check(
                Tenant, "slug", slug, "Slug made from the name (give one with --slug)"
            )
        _check(User, User.USERNAME_FIELD, admin, f"Admin username {admin!r}")
        if User.objects.filter(username=admin).exists():
            raise CommandError(f"A console user {admin!r} exists already.")

        password = self._password(options["password_file"])
        try:
            tenant, owner, password = do_create_tenant(
                name=name,
                slug=slug,
                admin_username=admin,
                admin_password=password,
            )
        except TenantExistsError:
            raise CommandError(f"A tenant with slug {slug!r} exists already.") from None

        self.stdout.write(f"Tenant {tenant.name} ({tenant.slug}): {tenant.pk}")
        self.stdout.write(f"Owner admin member: {owner.pk}")
        self.stdout.write(f"Console login: {admin}")
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
