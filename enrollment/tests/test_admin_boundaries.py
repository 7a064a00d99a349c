"""Tenant admins manage members and agents, never another admin's devices.

A device added to an owner admin would read the owner's messages, and a
revoked one would lock the owner out; only owner admins (and the device
itself, for revocation) may do either.
"""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from enrollment.models import Device, Invite
from enrollment.tests.helpers import as_admin
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import TenantWorld, make_device

pytestmark = pytest.mark.django_db


def test_a_tenant_admin_cannot_invite_a_device_for_an_owner_admin(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    as_admin(api, tenant_a)
    response = api.post(
        "/api/v1/invites", {"member_id": str(tenant_a.owner.pk)}, format="json"
    )
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    with tenant_scope(tenant_a.tenant.pk):
        assert not Invite.objects.filter(member=tenant_a.owner).exists()


def test_a_tenant_admin_still_invites_devices_for_itself_and_non_admins(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    as_admin(api, tenant_a)
    for member in (tenant_a.admin, tenant_a.member, tenant_a.agent):
        response = api.post(
            "/api/v1/invites", {"member_id": str(member.pk)}, format="json"
        )
        assert response.status_code == 201, response.json()


def test_an_owner_admin_invites_a_device_for_any_member(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    as_admin(api, tenant_a, who="owner")
    response = api.post(
        "/api/v1/invites", {"member_id": str(tenant_a.admin.pk)}, format="json"
    )
    assert response.status_code == 201


@pytest.mark.parametrize("act", ["approve", "revoke"])
def test_a_tenant_admin_cannot_approve_or_revoke_an_owner_admins_device(
    api: APIClient, tenant_a: TenantWorld, act: str
) -> None:
    with tenant_scope(tenant_a.tenant.pk):
        pending = make_device(tenant_a.owner, status=Device.Status.PENDING).device
    target = pending if act == "approve" else tenant_a.owner_device.device
    before = target.status

    as_admin(api, tenant_a)
    response = api.post(f"/api/v1/devices/{target.pk}/{act}")

    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    with tenant_scope(tenant_a.tenant.pk):
        assert Device.objects.get(pk=target.pk).status == before


def test_a_tenant_admin_revokes_a_members_device_and_a_device_itself(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    as_admin(api, tenant_a)
    member_device = tenant_a.member_device.device
    assert api.post(f"/api/v1/devices/{member_device.pk}/revoke").status_code == 200

    as_admin(api, tenant_a, who="owner")
    own = tenant_a.owner_device.device
    assert api.post(f"/api/v1/devices/{own.pk}/revoke").status_code == 200


def _console_as(client: Client, world: TenantWorld, role: str) -> None:
    with tenant_scope(world.tenant.pk):
        Member.objects.filter(pk=world.admin.pk).update(role=role)
    client.force_login(world.console_user)


def test_the_console_invite_form_hides_owner_admins_from_tenant_admins(
    client: Client, tenant_a: TenantWorld
) -> None:
    _console_as(client, tenant_a, "tenant_admin")
    page = client.get("/admin/enrollment/invite/add/").content.decode()
    assert str(tenant_a.member.pk) in page
    assert str(tenant_a.owner.pk) not in page
    assert 'value="owner_admin"' not in page
    assert 'value="tenant_admin"' not in page


def test_the_console_invite_form_offers_everything_to_owner_admins(
    client: Client, tenant_a: TenantWorld
) -> None:
    _console_as(client, tenant_a, "owner_admin")
    page = client.get("/admin/enrollment/invite/add/").content.decode()
    assert str(tenant_a.owner.pk) in page
    assert 'value="owner_admin"' in page
