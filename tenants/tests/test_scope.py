"""The tenant scope as the app role: isolation, nesting and the pool reset."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.db.utils import DatabaseError

from enrollment.models import Device
from tenants.models import Member
from tenants.scope import TenantScopeError, current_tenant_id, tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _count(sql: str, params: list[Any] | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return int(cursor.fetchone()[0])


def test_the_tests_connect_as_the_app_role(tenant_a: TenantWorld) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
        name, superuser, bypass = cursor.fetchone()
    assert name == "av_app"
    assert superuser is False
    assert bypass is False


def test_no_tenant_set_shows_no_rows(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    assert Member.objects.count() == 0
    assert Device.objects.count() == 0
    assert _count("SELECT count(*) FROM tenants_member") == 0


def test_a_scope_shows_only_its_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        names = set(Member.objects.values_list("tenant_id", flat=True))
        raw = _count(
            "SELECT count(*) FROM tenants_member WHERE tenant_id = %s",
            [tenant_b.tenant.pk],
        )
    assert names == {tenant_a.tenant.pk}
    assert raw == 0


def test_tenant_a_cannot_update_or_delete_tenant_b(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    other = tenant_b.member.pk
    with tenant_scope(tenant_a.tenant.pk):
        assert Member.objects.filter(pk=other).update(name="stolen") == 0
        assert Member.objects.filter(pk=other).delete()[0] == 0
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE tenants_member SET name = 'x' WHERE id = %s", [other]
            )
            assert cursor.rowcount == 0
            cursor.execute("DELETE FROM tenants_member WHERE id = %s", [other])
            assert cursor.rowcount == 0

    with tenant_scope(tenant_b.tenant.pk):
        assert Member.objects.get(pk=other).name == tenant_b.member.name


def test_tenant_a_cannot_insert_rows_for_tenant_b(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic():
                Member.objects.create(tenant=tenant_b.tenant, name="intruder")
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO tenants_member "
                    "(id, tenant_id, name, kind, role, is_active, created_at) "
                    "VALUES (%s, %s, 'raw', 'human', 'member', true, now())",
                    [uuid.uuid4(), tenant_b.tenant.pk],
                )


def test_a_row_cannot_move_to_another_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic():
                Member.objects.filter(pk=tenant_a.member.pk).update(
                    tenant_id=tenant_b.tenant.pk
                )


def test_rows_cannot_be_written_without_a_tenant(tenant_a: TenantWorld) -> None:
    with pytest.raises(ProgrammingError, match="row-level security"):
        with transaction.atomic():
            Member.objects.create(tenant=tenant_a.tenant, name="nobody's")


def test_a_nested_scope_of_the_same_tenant_keeps_it(tenant_a: TenantWorld) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with tenant_scope(tenant_a.tenant.pk):
            assert current_tenant_id() == tenant_a.tenant.pk
        assert current_tenant_id() == tenant_a.tenant.pk
        assert Member.objects.count() == 4


def test_a_scope_refuses_to_switch_tenants(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with pytest.raises(TenantScopeError):
            with tenant_scope(tenant_b.tenant.pk):
                pass  # pragma: no cover (never entered)
        assert current_tenant_id() == tenant_a.tenant.pk


def test_a_nested_switch_restores_the_outer_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with tenant_scope(tenant_b.tenant.pk, allow_switch=True):
            assert set(Member.objects.values_list("tenant_id", flat=True)) == {
                tenant_b.tenant.pk
            }
        assert current_tenant_id() == tenant_a.tenant.pk
        assert set(Member.objects.values_list("tenant_id", flat=True)) == {
            tenant_a.tenant.pk
        }


def test_a_failed_block_leaves_the_outer_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with pytest.raises(IntegrityError):
            with tenant_scope(tenant_b.tenant.pk, allow_switch=True):
                Member.objects.create(
                    tenant=tenant_b.tenant, name="bad", kind="agent", role="member"
                )
        assert current_tenant_id() == tenant_a.tenant.pk


def test_a_scope_outside_any_transaction_ends_with_it(tenant_a: TenantWorld) -> None:
    # Inside the test's transaction a sibling scope must not see the tenant.
    with tenant_scope(tenant_a.tenant.pk):
        pass
    assert current_tenant_id() is None
    assert Member.objects.count() == 0


def test_a_malformed_tenant_setting_is_refused_by_the_database(
    tenant_a: TenantWorld,
) -> None:
    with pytest.raises(DatabaseError):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.current_tenant_id', 'x', true)")
            cursor.execute("SELECT count(*) FROM tenants_member")


@pytest.mark.django_db(transaction=True)
def test_an_outermost_scope_sets_the_tenant_for_its_transaction_only(
    tenant_a: TenantWorld,
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        assert current_tenant_id() == tenant_a.tenant.pk
        assert Member.objects.count() == 4
    with transaction.atomic():
        assert current_tenant_id() is None
        assert Member.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_failed_request_transaction_does_not_break_the_scope_exit(
    tenant_a: TenantWorld,
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        with tenant_scope(tenant_a.tenant.pk):
            Member.objects.filter(pk=tenant_a.member.pk).update(name="renamed")
        transaction.set_rollback(True)
    with tenant_scope(tenant_a.tenant.pk):
        assert Member.objects.get(pk=tenant_a.member.pk).name == tenant_a.member.name
