"""The audit trail is append-only in the database and its chain shows tampering."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

import audit
from audit.actions import AuditScopeError
from audit.models import GENESIS_HASH, AuditEvent
from audit.verify import get_chain_report
from tenants.db import owner_connection
from tenants.scope import tenant_scope
from tests.support import TenantWorld


def _events(world: TenantWorld, count: int) -> list[AuditEvent]:
    with tenant_scope(world.tenant.pk):
        return [
            audit.record(
                "test.event", actor=world.admin, target=world.member, details={"n": n}
            )
            for n in range(count)
        ]


@pytest.mark.django_db
def test_events_form_a_chain_per_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    first_a, second_a = _events(tenant_a, 2)
    (first_b,) = _events(tenant_b, 1)

    assert first_a.prev_hash == GENESIS_HASH
    assert second_a.prev_hash == first_a.hash
    assert first_b.prev_hash == GENESIS_HASH
    assert first_a.actor_kind == "member"
    assert first_a.actor_id == str(tenant_a.admin.pk)
    with tenant_scope(tenant_a.tenant.pk):
        assert get_chain_report(tenant_a.tenant.pk).ok is True
        assert AuditEvent.objects.filter(tenant=tenant_b.tenant).count() == 0


@pytest.mark.django_db
def test_recording_outside_a_tenant_scope_is_refused(tenant_a: TenantWorld) -> None:
    with pytest.raises(AuditScopeError):
        audit.record("test.event")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET action = 'forged'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
)
def test_the_app_role_cannot_change_or_remove_events(
    tenant_a: TenantWorld, statement: str
) -> None:
    _events(tenant_a, 2)
    with tenant_scope(tenant_a.tenant.pk):
        with pytest.raises(DatabaseError, match="permission denied"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement)
        assert AuditEvent.objects.filter(action="test.event").count() == 2


@pytest.mark.django_db
def test_the_model_refuses_to_save_or_delete_an_existing_event(
    tenant_a: TenantWorld,
) -> None:
    (event,) = _events(tenant_a, 1)
    event.action = "forged"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET action = 'forged'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
)
def test_triggers_refuse_changes_even_by_the_owner(
    tenant_a: TenantWorld, statement: str
) -> None:
    _events(tenant_a, 1)
    with owner_connection():
        with pytest.raises(DatabaseError, match="append-only"):
            with transaction.atomic(), connection.cursor() as cursor:
                # The owner sees no rows under forced RLS; even with RLS
                # lifted, the triggers refuse.
                cursor.execute(
                    "ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY"
                )
                cursor.execute(statement)


def _tamper(sql: str, params: list[Any]) -> None:
    """Change history as an attacker with the owner role would."""
    with owner_connection(), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute("ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent FORCE ROW LEVEL SECURITY")
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


@pytest.mark.django_db(transaction=True)
def test_audit_verify_finds_an_edited_event(tenant_a: TenantWorld) -> None:
    events = _events(tenant_a, 5)
    _tamper(
        "UPDATE audit_auditevent SET details = '{\"n\": 99}' WHERE id = %s",
        [events[2].pk],
    )

    err = io.StringIO()
    with pytest.raises(CommandError, match="1 audit chain"):
        call_command("audit_verify", tenant=tenant_a.tenant.slug, stderr=err)
    assert f"chain broken at event {events[2].pk} (content does not match hash)" in (
        err.getvalue()
    )


@pytest.mark.django_db(transaction=True)
def test_audit_verify_finds_an_inserted_event(tenant_a: TenantWorld) -> None:
    events = _events(tenant_a, 3)
    # A forged event slipped between the first and second: it cannot carry
    # the right previous hash and also let the next event link to it.
    _tamper(
        "UPDATE audit_auditevent SET prev_hash = %s WHERE id = %s",
        ["f" * 64, events[1].pk],
    )

    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("audit_verify", tenant=tenant_a.tenant.slug, stderr=err)
    assert f"chain broken at event {events[1].pk} (previous hash does not link)" in (
        err.getvalue()
    )


@pytest.mark.django_db(transaction=True)
def test_audit_verify_and_export_on_an_intact_chain(tenant_a: TenantWorld) -> None:
    _events(tenant_a, 3)
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "alpha: 3 events, chain intact" in out.getvalue()

    exported = io.StringIO()
    call_command("audit_export", tenant="alpha", stdout=exported, stderr=io.StringIO())
    lines = [json.loads(line) for line in exported.getvalue().splitlines()]
    assert [line["details"] for line in lines] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert lines[1]["prev_hash"] == lines[0]["hash"]


@pytest.mark.django_db
def test_commands_explain_an_unknown_tenant() -> None:
    with pytest.raises(CommandError, match="No tenant 'nope'"):
        call_command("audit_verify", tenant="nope")
    with pytest.raises(CommandError, match="No tenant 'nope'"):
        call_command("audit_export", tenant="nope")
