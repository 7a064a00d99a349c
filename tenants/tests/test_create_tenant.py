"""``manage.py create_tenant``: a tenant, its owner admin and a console login."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import AuditEvent
from tenants.models import Member, Tenant, User
from tenants.scope import tenant_scope

pytestmark = pytest.mark.django_db


def test_it_creates_the_tenant_owner_and_console_login(client: Client) -> None:
    out = io.StringIO()
    call_command("create_tenant", "Acme Labs", admin="alice", stdout=out)

    tenant = Tenant.objects.get(slug="acme-labs")
    user = User.objects.get(username="alice")
    password = out.getvalue().split("Console password (shown once): ")[1].strip()
    with tenant_scope(tenant.pk):
        owner = Member.objects.get(user=user)
        actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert owner.role == "owner_admin"
    assert user.tenant == tenant and user.is_staff and not user.is_superuser
    assert actions == ["tenant.created", "member.created"]
    assert client.login(username="alice", password=password)
    assert client.get("/admin/tenants/member/").status_code == 200


def test_it_reads_the_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("a long and unusual passphrase\n")
    out = io.StringIO()
    call_command(
        "create_tenant", "Beta", admin="bob", password_file=str(secret), stdout=out
    )
    assert "shown once" not in out.getvalue()
    assert User.objects.get(username="bob").check_password(
        "a long and unusual passphrase"
    )


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (["!!!"], {"admin": "x"}, "Give the tenant a name with letters or digits."),
        (["Acme"], {"admin": "taken"}, "A console user 'taken' exists already."),
        (
            ["Acme"],
            {"admin": "new", "slug": "acme"},
            "A tenant with slug 'acme' exists",
        ),
        (["Acme"], {"admin": "n2", "password_file": "/nope"}, "Cannot read /nope"),
        (
            ["x" * 201],
            {"admin": "n3", "slug": "long"},
            "Tenant name: Ensure this value has at most 200 characters (it has 201).",
        ),
        (
            ["Acme 2"],
            {"admin": "n4", "slug": "BAD SLUG!"},
            "Slug 'BAD SLUG!': Enter a valid “slug” consisting of letters, numbers, "
            "underscores or hyphens.",
        ),
        (
            ["x" * 65],
            {"admin": "n5"},
            "Slug made from the name (give one with --slug): Ensure this value has "
            "at most 64 characters (it has 65).",
        ),
        (
            ["Acme 3"],
            {"admin": "has space"},
            "Admin username 'has space': Enter a valid username. This value may "
            "contain only letters, numbers, and @/./+/-/_ characters.",
        ),
        (
            ["Acme 4"],
            {"admin": "back\\slash"},
            "Admin username 'back\\\\slash': Enter a valid username.",
        ),
        (
            ["Acme 5"],
            {"admin": "u" * 151},
            "Ensure this value has at most 150 characters (it has 151).",
        ),
        (["Acme 6"], {"admin": " "}, "Give the admin a username."),
    ],
)
def test_it_explains_bad_input(
    args: list[str], options: dict[str, str], message: str
) -> None:
    call_command("create_tenant", "Acme", admin="taken", stdout=io.StringIO())
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("create_tenant", *args, stdout=io.StringIO(), **options)
    assert Tenant.objects.count() == 1
    assert User.objects.count() == 1


def test_it_refuses_a_weak_password(tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.write_text("123")
    with pytest.raises(CommandError, match="too short"):
        call_command("create_tenant", "Gamma", admin="g", password_file=str(weak))
    assert not Tenant.objects.exists()
