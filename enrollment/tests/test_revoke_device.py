"""POST /api/v1/devices/{id}/revoke: admins, or the device itself."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from enrollment.models import DeviceChallenge, OneTimePrekey, SignedPrekey
from enrollment.signals import device_revoked
from enrollment.tests.helpers import (
    as_admin,
    audit_actions,
    challenge,
    device,
    make_prekeys,
)
from tenants.scope import current_tenant_id, tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _with_prekeys(api: APIClient, world: TenantWorld, who: str = "member") -> Any:
    identity = getattr(world, f"{who}_device")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {identity.token}")
    body = make_prekeys(identity.signing_key).body()
    assert api.put("/api/v1/devices/me/prekeys", body, format="json").status_code == 200
    challenge(api, identity.device.pk)
    return identity


def _keys_left(world: TenantWorld, device_id: uuid.UUID) -> tuple[int, int, int]:
    with tenant_scope(world.tenant.pk):
        return (
            OneTimePrekey.objects.filter(device_id=device_id).count(),
            SignedPrekey.objects.filter(device_id=device_id).count(),
            DeviceChallenge.objects.filter(device_id=device_id).count(),
        )


def test_an_admin_revokes_a_device_and_its_prekeys_go(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = _with_prekeys(api, tenant_a)
    assert _keys_left(tenant_a, identity.device.pk) == (10, 1, 1)
    heard: list[tuple[Any, Any]] = []

    def receiver(*, device: Any, **kwargs: Any) -> None:
        # Sent inside the revoking transaction, in the device's tenant scope.
        heard.append((device.status, current_tenant_id()))
        assert connection.in_atomic_block

    device_revoked.connect(receiver, dispatch_uid="test-revoke")
    try:
        as_admin(api, tenant_a)
        first = api.post(f"/api/v1/devices/{identity.device.pk}/revoke")
        again = api.post(f"/api/v1/devices/{identity.device.pk}/revoke")
    finally:
        device_revoked.disconnect(dispatch_uid="test-revoke")

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "revoked"
    assert device(tenant_a, identity.device.pk).revoked_at is not None
    assert _keys_left(tenant_a, identity.device.pk) == (0, 0, 0)
    assert heard == [("revoked", tenant_a.tenant.pk)]
    assert audit_actions(tenant_a).count("device.revoked") == 1


def test_a_device_revokes_itself(api: APIClient, tenant_a: TenantWorld) -> None:
    identity = tenant_a.agent_device
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {identity.token}")

    response = api.post(f"/api/v1/devices/{identity.device.pk}/revoke")
    after = api.get("/api/v1/devices/me")

    assert response.status_code == 200
    assert (after.status_code, after.json()["code"]) == (401, "device_revoked")


@pytest.mark.parametrize("who", ["member", "agent"])
def test_members_and_agents_cannot_revoke_other_devices(
    api: APIClient, tenant_a: TenantWorld, who: str
) -> None:
    as_admin(api, tenant_a, who=who)
    target = tenant_a.owner_device.device.pk

    response = api.post(f"/api/v1/devices/{target}/revoke")

    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    assert device(tenant_a, target).status == "active"


def test_an_admin_of_another_tenant_gets_not_found(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    identity = _with_prekeys(api, tenant_b)
    as_admin(api, tenant_a, who="owner")

    foreign = api.post(f"/api/v1/devices/{identity.device.pk}/revoke")
    missing = api.post(f"/api/v1/devices/{uuid.uuid4()}/revoke")

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    assert device(tenant_b, identity.device.pk).status == "active"
    assert _keys_left(tenant_b, identity.device.pk) == (10, 1, 1)


def test_a_failing_receiver_rolls_the_revocation_back(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    target = tenant_a.member_device.device.pk

    def failing(**kwargs: Any) -> None:
        raise RuntimeError("queue clean-up failed")

    device_revoked.connect(failing, dispatch_uid="test-fail")
    try:
        as_admin(api, tenant_a)
        api.raise_request_exception = False
        response = api.post(f"/api/v1/devices/{target}/revoke")
    finally:
        device_revoked.disconnect(dispatch_uid="test-fail")

    assert response.status_code == 500
    assert device(tenant_a, target).status == "active"
    assert "device.revoked" not in audit_actions(tenant_a)
