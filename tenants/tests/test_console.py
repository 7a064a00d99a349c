"""The tenant console: an admin of tenant A sees none of tenant B's objects."""

from __future__ import annotations

import pytest
from django.test import Client

import audit
from audit.models import AuditEvent
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(client: Client, tenant_a: TenantWorld, tenant_b: TenantWorld) -> Client:
    """Return a client signed in as tenant A's console admin."""
    for world in (tenant_a, tenant_b):
        with tenant_scope(world.tenant.pk):
            audit.record(
                f"test.{world.tenant.slug}", actor=world.admin, target=world.member
            )
    client.force_login(tenant_a.console_user)
    return client


def test_member_list_shows_only_this_tenant(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    page = console.get("/admin/tenants/member/").content.decode()
    assert tenant_a.member.name in page
    assert tenant_b.member.name not in page
    assert "bravo" not in page


def test_another_tenants_member_is_not_found(
    console: Client, tenant_b: TenantWorld
) -> None:
    response = console.get(f"/admin/tenants/member/{tenant_b.member.pk}/change/")
    missing = console.get(
        "/admin/tenants/member/00000000-0000-0000-0000-000000000000/change/"
    )
    assert response.status_code == missing.status_code == 302
    assert response["Location"] == missing["Location"] == "/admin/"


def test_tenant_list_and_form_show_only_this_tenant(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    page = console.get("/admin/tenants/tenant/").content.decode()
    assert tenant_a.tenant.name in page
    assert tenant_b.tenant.name not in page
    other = console.get(f"/admin/tenants/tenant/{tenant_b.tenant.pk}/change/")
    assert other.status_code == 302


def test_form_choices_come_from_this_tenant_only(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    # Owner admins see the console-user choice; sign in as one.
    tenant_a.owner.user = tenant_a.console_user
    with tenant_scope(tenant_a.tenant.pk):
        Member.objects.filter(pk=tenant_a.admin.pk).update(user=None)
        tenant_a.owner.save(update_fields=["user"])

    page = console.get("/admin/tenants/member/add/").content.decode()
    assert tenant_a.console_user.username in page
    assert tenant_b.console_user.username not in page


def test_audit_list_and_filters_show_only_this_tenant(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    page = console.get("/admin/audit/auditevent/").content.decode()
    assert "test.alpha" in page
    assert "test.bravo" not in page

    filtered = console.get("/admin/audit/auditevent/?action=test.bravo")
    assert filtered.context["cl"].result_count == 0
    with tenant_scope(tenant_b.tenant.pk):
        other_event = AuditEvent.objects.get(action="test.bravo")
    assert (
        console.get(f"/admin/audit/auditevent/{other_event.pk}/change/").status_code
        == 302
    )


def test_audit_events_cannot_be_changed_from_the_console(
    console: Client, tenant_a: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        event = AuditEvent.objects.get(action="test.alpha")
    url = f"/admin/audit/auditevent/{event.pk}/change/"
    assert console.get(url).status_code == 200
    assert console.post(url, {"action": "forged"}).status_code == 403
    assert console.get(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403


def test_autocomplete_offers_only_this_tenants_members(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    response = console.get(
        "/admin/autocomplete/",
        {
            "app_label": "enrollment",
            "model_name": "device",
            "field_name": "member",
            "term": "",
        },
    )
    names = {item["text"] for item in response.json()["results"]}
    assert tenant_a.member.name in names
    assert not any(name.startswith("bravo") for name in names)


def test_a_plain_member_login_cannot_use_the_console(
    client: Client, tenant_a: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        Member.objects.filter(pk=tenant_a.admin.pk).update(role=Member.Role.MEMBER)
    client.force_login(tenant_a.console_user)
    assert client.get("/admin/tenants/member/").status_code == 403


def test_console_logins_and_failures_are_audited(
    client: Client, tenant_a: TenantWorld
) -> None:
    username = tenant_a.console_user.username
    failed = client.post("/admin/login/", {"username": username, "password": "wrong"})
    assert failed.status_code == 200
    ok = client.post(
        "/admin/login/", {"username": username, "password": "correct horse battery"}
    )
    assert ok.status_code == 302

    with tenant_scope(tenant_a.tenant.pk):
        actions = list(
            AuditEvent.objects.filter(action__startswith="console.").values_list(
                "action", flat=True
            )
        )
    assert actions == ["console.login_failed", "console.login"]


def test_a_role_change_by_an_owner_admin_is_audited(
    client: Client, tenant_a: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        Member.objects.filter(pk=tenant_a.admin.pk).update(role=Member.Role.OWNER_ADMIN)
    client.force_login(tenant_a.console_user)
    response = client.post(
        f"/admin/tenants/member/{tenant_a.member.pk}/change/",
        {
            "name": tenant_a.member.name,
            "role": "tenant_admin",
            "is_active": "on",
            "user": "",
        },
    )
    assert response.status_code == 302

    with tenant_scope(tenant_a.tenant.pk):
        event = AuditEvent.objects.get(action="member.role_changed")
        assert Member.objects.get(pk=tenant_a.member.pk).role == "tenant_admin"
    assert event.details == {"from": "member", "to": "tenant_admin"}
    assert event.target_id == str(tenant_a.member.pk)


def test_a_tenant_admin_cannot_create_an_admin_in_the_console(
    client: Client, tenant_a: TenantWorld
) -> None:
    client.force_login(tenant_a.console_user)
    response = client.post(
        "/admin/tenants/member/add/",
        {"name": "usurper", "kind": "human", "role": "owner_admin", "is_active": "on"},
    )
    form = response.context["adminform"].form
    assert response.status_code == 200  # the form comes back with an error
    assert "role" in form.errors
    assert [value for value, _ in form.fields["role"].choices] == ["member", "agent"]
    with tenant_scope(tenant_a.tenant.pk):
        assert not Member.objects.filter(name="usurper").exists()


def test_a_tenant_admin_cannot_change_or_deactivate_an_owner_admin(
    client: Client, tenant_a: TenantWorld
) -> None:
    client.force_login(tenant_a.console_user)
    url = f"/admin/tenants/member/{tenant_a.owner.pk}/change/"
    response = client.post(url, {"name": tenant_a.owner.name, "role": "owner_admin"})
    assert response.status_code == 403
    with tenant_scope(tenant_a.tenant.pk):
        assert Member.objects.get(pk=tenant_a.owner.pk).is_active is True


def test_a_tenant_admin_still_edits_a_member(
    client: Client, tenant_a: TenantWorld
) -> None:
    client.force_login(tenant_a.console_user)
    url = f"/admin/tenants/member/{tenant_a.member.pk}/change/"
    response = client.post(url, {"name": "renamed member"})
    assert response.status_code == 302
    with tenant_scope(tenant_a.tenant.pk):
        member = Member.objects.get(pk=tenant_a.member.pk)
    assert (member.name, member.is_active) == ("renamed member", False)


def test_console_sign_in_is_throttled_per_account(
    client: Client, tenant_a: TenantWorld
) -> None:
    from django.core.cache import cache

    cache.clear()
    username = tenant_a.console_user.username
    answers = [
        client.post("/admin/login/", {"username": username, "password": "wrong"})
        for _ in range(11)
    ]
    assert [a.status_code for a in answers] == [200] * 10 + [403]

    right = client.post(
        "/admin/login/", {"username": username, "password": "correct horse battery"}
    )
    assert right.status_code == 403  # still blocked: guessing gains nothing
    cache.clear()
