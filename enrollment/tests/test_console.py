"""The tenant console: invites (token shown once) and device actions."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from rest_framework.test import APIClient

from enrollment.models import Invite
from enrollment.tests.helpers import audit_actions, captured_logs, device, enroll
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(client: Client, tenant_a: TenantWorld, tenant_b: TenantWorld) -> Client:
    """Return a client signed in as tenant A's console admin."""
    client.force_login(tenant_a.console_user)
    return client


def _create(console: Client, **fields: str) -> str:
    data = {"member": "", "member_name": "", "member_kind": "", "member_role": ""}
    data.update({"hours": "24", **fields})
    response = console.post("/admin/enrollment/invite/add/", data)
    assert response.status_code == 200, response.content[:2000]
    found = re.search(
        r'<pre id="invite-token">([^<]+)</pre>', response.content.decode()
    )
    assert found, response.content.decode()[:3000]
    assert "no-store" in response["Cache-Control"]
    return found.group(1)


def test_an_invite_created_in_the_console_shows_its_token_once(
    console: Client, api: APIClient, tenant_a: TenantWorld
) -> None:
    with captured_logs() as lines:
        token = _create(
            console, member_name="Helper", member_kind="agent", member_role="agent"
        )
        listing = console.get("/admin/enrollment/invite/").content.decode()
    secret = token.split(".")[2]

    assert token.startswith(f"av1.{tenant_a.tenant.pk}.")
    assert secret not in listing
    assert secret not in "\n".join(lines)
    with tenant_scope(tenant_a.tenant.pk):
        invite = Invite.objects.get()
    page = console.get(f"/admin/enrollment/invite/{invite.pk}/change/").content.decode()
    assert secret not in page
    assert enroll(api, token).status_code == 201
    assert audit_actions(tenant_a)[-2:] == ["invite.created", "device.enrolled"]


def test_the_console_revokes_invites(console: Client, tenant_a: TenantWorld) -> None:
    _create(console, member=str(tenant_a.member.pk))
    with tenant_scope(tenant_a.tenant.pk):
        invite = Invite.objects.get()

    console.post(
        "/admin/enrollment/invite/",
        {"action": "revoke_invites", ACTION_CHECKBOX_NAME: [str(invite.pk)]},
    )

    with tenant_scope(tenant_a.tenant.pk):
        assert Invite.objects.get().revoked_at is not None
    assert audit_actions(tenant_a)[-1] == "invite.revoked"


def test_approval_asks_first_and_shows_the_fingerprint(
    console: Client, api: APIClient, tenant_a: TenantWorld
) -> None:
    token = _create(console, member=str(tenant_a.member.pk))
    enrolled = enroll(api, token).json()
    data = {"action": "approve_devices", ACTION_CHECKBOX_NAME: [enrolled["device_id"]]}

    asked = console.post("/admin/enrollment/device/", data)
    assert enrolled["fingerprint"] in asked.content.decode()
    assert device(tenant_a, enrolled["device_id"]).status == "pending"

    console.post("/admin/enrollment/device/", {**data, "confirm": "yes"})
    assert device(tenant_a, enrolled["device_id"]).status == "active"
    assert audit_actions(tenant_a)[-1] == "device.approved"
    actor = _last_actor(tenant_a)
    assert actor == ("member", str(tenant_a.admin.pk))


def test_revocation_asks_first_then_revokes(
    console: Client, tenant_a: TenantWorld
) -> None:
    target = tenant_a.member_device.device
    data = {"action": "revoke_devices", ACTION_CHECKBOX_NAME: [str(target.pk)]}

    asked = console.post("/admin/enrollment/device/", data)
    assert target.fingerprint in asked.content.decode()
    assert device(tenant_a, target.pk).status == "active"

    console.post("/admin/enrollment/device/", {**data, "confirm": "yes"})
    assert device(tenant_a, target.pk).status == "revoked"


def test_the_console_never_touches_another_tenants_devices(
    console: Client, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    foreign = tenant_b.member_device.device
    listing = console.get("/admin/enrollment/device/").content.decode()
    assert foreign.fingerprint not in listing
    assert tenant_a.member_device.device.fingerprint in listing

    data = {
        "action": "revoke_devices",
        ACTION_CHECKBOX_NAME: [str(foreign.pk)],
        "confirm": "yes",
    }
    console.post("/admin/enrollment/device/", data)
    page = console.get(f"/admin/enrollment/device/{foreign.pk}/change/")

    assert device(tenant_b, foreign.pk).status == "active"
    assert page.status_code == 302


def _last_actor(world: TenantWorld) -> tuple[str, str]:
    from audit.models import AuditEvent

    with tenant_scope(world.tenant.pk):
        event = AuditEvent.objects.order_by("-id").first()
    assert event is not None
    return event.actor_kind, event.actor_id
