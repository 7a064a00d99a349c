"""POST /api/v1/auth/challenge and /api/v1/auth/token; GET /devices/me."""

from __future__ import annotations

import base64
import datetime
import uuid

import pytest
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from agentvault.auth.tokens import verify_token
from enrollment.models import DeviceChallenge
from enrollment.tests.helpers import (
    as_admin,
    audit_actions,
    b64,
    challenge,
    create_invite,
    device,
    enroll,
    make_prekeys,
    request_token,
    sign_challenge,
)
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _enrolled(api: APIClient, world: TenantWorld) -> tuple[str, SigningKey]:
    key = SigningKey.generate()
    response = enroll(api, create_invite(api, world)["token"], key)
    assert response.status_code == 201
    return str(response.json()["device_id"]), key


def _approve(api: APIClient, world: TenantWorld, device_id: str) -> None:
    as_admin(api, world)
    assert api.post(f"/api/v1/devices/{device_id}/approve").status_code == 200
    api.credentials()


def _failed(response: object) -> None:
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response.json()["code"] == "challenge_failed"  # type: ignore[attr-defined]


def test_an_active_device_gets_a_token_for_a_signed_challenge(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id, key = _enrolled(api, tenant_a)
    _approve(api, tenant_a, device_id)

    response = request_token(api, device_id, key)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    verified = verify_token(body["access_token"])
    assert verified.subject == device_id
    assert verified.claims["tid"] == str(tenant_a.tenant.pk)
    assert device(tenant_a, device_id).last_seen_at is not None
    assert audit_actions(tenant_a)[-1] == "device.token_issued"

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access_token']}")
    assert api.get("/api/v1/devices/me").json()["status"] == "active"


def test_a_pending_device_may_only_read_its_own_status(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id, key = _enrolled(api, tenant_a)
    token = request_token(api, device_id, key).json()["access_token"]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    me = api.get("/api/v1/devices/me")
    upload = api.put(
        "/api/v1/devices/me/prekeys", make_prekeys(key).body(), format="json"
    )
    listed = api.get("/api/v1/devices/me/prekeys")
    bundles = api.post(f"/api/v1/members/{tenant_a.owner.pk}/prekey-bundles")
    revoke = api.post(f"/api/v1/devices/{device_id}/revoke")

    assert me.status_code == 200 and me.json()["status"] == "pending"
    for refused in (upload, listed, bundles, revoke):
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert device(tenant_a, device_id).status == "pending"


def test_a_challenge_works_once(api: APIClient, tenant_a: TenantWorld) -> None:
    device_id, key = _enrolled(api, tenant_a)
    value = challenge(api, device_id)

    assert request_token(api, device_id, key, value).status_code == 200
    _failed(request_token(api, device_id, key, value))
    assert audit_actions(tenant_a)[-1] == "device.token_refused"


def test_a_challenge_expires_after_60_seconds(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id, key = _enrolled(api, tenant_a)
    value = challenge(api, device_id)
    with tenant_scope(tenant_a.tenant.pk):
        stored = DeviceChallenge.objects.get(device_id=device_id)
        assert stored.expires_at - stored.created_at <= datetime.timedelta(seconds=60.5)
        DeviceChallenge.objects.filter(pk=stored.pk).update(
            expires_at=datetime.datetime.now(datetime.UTC)
            - datetime.timedelta(seconds=1)
        )

    _failed(request_token(api, device_id, key, value))


def test_a_signature_by_another_key_or_for_another_device_fails(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id, key = _enrolled(api, tenant_a)
    other_id, other_key = _enrolled(api, tenant_a)

    _failed(request_token(api, device_id, SigningKey.generate()))
    # A signature made for another device id does not transfer.
    value = challenge(api, device_id)
    body = {
        "device_id": device_id,
        "challenge": b64(value),
        "signature": sign_challenge(key, value, other_id),
    }
    _failed(api.post("/api/v1/auth/token", body, format="json"))
    # The refused attempts used up their challenges.
    with tenant_scope(tenant_a.tenant.pk):
        assert DeviceChallenge.objects.filter(device_id=device_id).count() == 0


def test_an_unknown_device_gets_the_answer_of_a_bad_signature(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    unknown = uuid.uuid4()
    value = challenge(api, unknown)  # a challenge comes back all the same

    response = request_token(api, unknown, SigningKey.generate(), value)
    bad = request_token(api, tenant_a.member_device.device.pk, SigningKey.generate())

    _failed(response)
    assert response.json() == bad.json()
    assert len(value) == 32


def test_a_revoked_device_gets_no_token_and_its_token_stops_working(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    device_id, key = _enrolled(api, tenant_a)
    _approve(api, tenant_a, device_id)
    old_token = request_token(api, device_id, key).json()["access_token"]
    value = challenge(api, device_id)
    as_admin(api, tenant_a)
    assert api.post(f"/api/v1/devices/{device_id}/revoke").status_code == 200

    _failed(request_token(api, device_id, key, value))
    _failed(request_token(api, device_id, key))
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {old_token}")
    response = api.get("/api/v1/devices/me")
    assert (response.status_code, response.json()["code"]) == (401, "device_revoked")


def test_the_directory_function_answers_only_the_tenant_of_a_device(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    from django.db import connection

    from enrollment.directory import get_device_tenant

    device_b = tenant_b.member_device.device
    assert get_device_tenant(device_b.pk) == tenant_b.tenant.pk
    assert get_device_tenant(uuid.uuid4()) is None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.prosecdef, pg_get_userbyid(p.proowner), p.provolatile, "
            "has_function_privilege('public', p.oid, 'EXECUTE'), p.proconfig "
            "FROM pg_proc p WHERE p.proname = 'enrollment_device_tenant'"
        )
        definer, owner, volatility, public, config = cursor.fetchone()
        # The app role itself still sees no device outside a scope.
        cursor.execute("SELECT count(*) FROM enrollment_device")
        (visible,) = cursor.fetchone()
    assert (definer, owner, volatility, public) == (True, "av_operator", "s", False)
    assert config == ["search_path=pg_catalog, public"]
    assert visible == 0


def test_a_bearer_token_of_another_tenant_gets_no_device_token(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    target = tenant_b.member_device
    as_admin(api, tenant_a)
    response = api.post(
        "/api/v1/auth/challenge", {"device_id": str(target.device.pk)}, format="json"
    )
    value = base64.b64decode(response.json()["challenge"])
    body = {
        "device_id": str(target.device.pk),
        "challenge": b64(value),
        "signature": sign_challenge(target.signing_key, value, target.device.pk),
    }

    refused = api.post("/api/v1/auth/token", body, format="json")

    _failed(refused)
    with tenant_scope(tenant_b.tenant.pk):
        assert DeviceChallenge.objects.filter(device=target.device).count() == 0
