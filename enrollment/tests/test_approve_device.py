"""POST /api/v1/devices/{id}/approve and GET /api/v1/devices (admins)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from enrollment.models import Device
from enrollment.signals import device_approved
from enrollment.tests.helpers import (
    as_admin,
    audit_actions,
    create_invite,
    device,
    enroll,
)
from tests.support import TenantWorld, make_device

pytestmark = pytest.mark.django_db


def _pending(api: APIClient, world: TenantWorld) -> str:
    response = enroll(api, create_invite(api, world)["token"])
    assert response.status_code == 201
    return str(response.json()["device_id"])


def test_an_admin_approves_a_pending_device_once(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id = _pending(api, tenant_a)
    heard: list[Any] = []
    device_approved.connect(
        lambda **kw: heard.append(kw["device"].pk), weak=False, dispatch_uid="t"
    )
    try:
        as_admin(api, tenant_a)
        first = api.post(f"/api/v1/devices/{device_id}/approve")
        again = api.post(f"/api/v1/devices/{device_id}/approve")
    finally:
        device_approved.disconnect(dispatch_uid="t")

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "active"
    assert first.json()["fingerprint"] == device(tenant_a, device_id).fingerprint
    assert device(tenant_a, device_id).approved_at is not None
    assert heard == [uuid.UUID(device_id)]
    assert audit_actions(tenant_a).count("device.approved") == 1


def test_a_revoked_device_cannot_be_approved(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id = _pending(api, tenant_a)
    as_admin(api, tenant_a)
    assert api.post(f"/api/v1/devices/{device_id}/revoke").status_code == 200

    response = api.post(f"/api/v1/devices/{device_id}/approve")

    assert (response.status_code, response.json()["code"]) == (409, "device_revoked")
    assert device(tenant_a, device_id).status == "revoked"


def test_an_admin_of_another_tenant_gets_not_found(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    device_id = _pending(api, tenant_b)
    as_admin(api, tenant_a)

    foreign = api.post(f"/api/v1/devices/{device_id}/approve")
    missing = api.post(f"/api/v1/devices/{uuid.uuid4()}/approve")

    assert foreign.status_code == missing.status_code == 404
    assert (
        foreign.json()
        == missing.json()
        == {
            "code": "not_found",
            "message": "Not found.",
            "fields": {},
        }
    )
    assert device(tenant_b, device_id).status == "pending"
    assert "device.approved" not in audit_actions(tenant_b)


@pytest.mark.parametrize("who", ["member", "agent"])
def test_members_and_agents_cannot_approve_or_list(
    api: APIClient, tenant_a: TenantWorld, who: str
) -> None:
    device_id = _pending(api, tenant_a)
    as_admin(api, tenant_a, who=who)

    approve = api.post(f"/api/v1/devices/{device_id}/approve")
    listed = api.get("/api/v1/devices")

    assert (approve.status_code, approve.json()["code"]) == (403, "forbidden")
    assert (listed.status_code, listed.json()["code"]) == (403, "forbidden")
    assert device(tenant_a, device_id).status == "pending"


def test_admins_list_their_tenants_devices_in_constant_queries(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    pending = _pending(api, tenant_a)
    as_admin(api, tenant_a, who="owner")

    with CaptureQueriesContext(connection) as few:
        body = api.get("/api/v1/devices").json()
    from tenants.scope import tenant_scope

    with tenant_scope(tenant_a.tenant.pk):
        for _ in range(3):
            make_device(tenant_a.member)
    with CaptureQueriesContext(connection) as more:
        longer = api.get("/api/v1/devices").json()

    assert len(body) == 5 and len(longer) == 8
    assert len(few.captured_queries) == len(more.captured_queries)
    by_id = {item["id"]: item for item in body}
    assert by_id[pending]["status"] == "pending"
    assert set(by_id[pending]) >= {"fingerprint", "last_seen_at", "member_name"}
    assert {item["id"] for item in body}.isdisjoint(
        {str(tenant_b.member_device.device.pk)}
    )
    only_pending = api.get("/api/v1/devices?status=pending").json()
    assert [item["id"] for item in only_pending] == [pending]
    assert str(Device.Status.PENDING) == "pending"
