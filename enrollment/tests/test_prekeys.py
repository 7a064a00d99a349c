"""PUT and GET /api/v1/devices/me/prekeys."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from enrollment.models import OneTimePrekey, SignedPrekey
from enrollment.tests.helpers import b64, make_prekeys
from tenants.scope import tenant_scope
from tests.support import DeviceIdentity, TenantWorld

pytestmark = pytest.mark.django_db


def _as(api: APIClient, identity: DeviceIdentity) -> APIClient:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {identity.token}")
    return api


def _put(api: APIClient, body: dict[str, Any]) -> Any:
    return api.put("/api/v1/devices/me/prekeys", body, format="json")


def _stored(world: TenantWorld, identity: DeviceIdentity) -> tuple[list[int], Any]:
    with tenant_scope(world.tenant.pk):
        ids = list(
            OneTimePrekey.objects.filter(device=identity.device)
            .order_by("id")
            .values_list("key_id", flat=True)
        )
        signed = (
            SignedPrekey.objects.filter(device=identity.device)
            .values_list("key_id", flat=True)
            .first()
        )
    return ids, signed


def test_a_device_publishes_and_counts_its_prekeys(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    prekeys = make_prekeys(identity.signing_key, signed_id=7, ids=range(1, 21))

    response = _put(api, prekeys.body())
    status = api.get("/api/v1/devices/me/prekeys")

    assert response.status_code == 200
    assert response.json() == {"one_time_prekeys": 20}
    assert status.json() == {"one_time_prekeys": 20, "signed_prekey_id": 7}
    assert _stored(tenant_a, identity) == (list(range(1, 21)), 7)


def test_the_same_upload_twice_stores_each_key_once(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    body = make_prekeys(identity.signing_key).body()

    assert _put(api, body).json() == {"one_time_prekeys": 10}
    assert _put(api, body).json() == {"one_time_prekeys": 10}


def test_a_signed_prekey_signed_by_another_key_is_422(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    forged = make_prekeys(SigningKey.generate()).body()

    response = _put(api, forged)

    assert (response.status_code, response.json()["code"]) == (422, "bad_signature")
    assert _stored(tenant_a, identity) == ([], None)


def test_a_signature_over_another_prekey_id_is_422(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    body = make_prekeys(identity.signing_key, signed_id=3).body()
    body["signed_prekey"]["id"] = 4

    response = _put(api, body)

    assert (response.status_code, response.json()["code"]) == (422, "bad_signature")


def test_more_than_100_per_upload_is_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)

    response = _put(api, make_prekeys(identity.signing_key, ids=range(1, 102)).body())

    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert "one_time_prekeys" in response.json()["fields"]
    assert _stored(tenant_a, identity) == ([], None)


def test_a_device_stores_at_most_the_configured_number(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    with override_settings(ENROLLMENT={"PREKEYS_STORED": 15}):
        first = _put(api, make_prekeys(identity.signing_key, ids=range(1, 11)).body())
        more = make_prekeys(identity.signing_key, ids=range(11, 17))
        over = _put(api, more.body(with_signed=False))

    assert first.status_code == 200
    assert (over.status_code, over.json()["code"]) == (409, "prekey_limit_reached")
    assert _stored(tenant_a, identity)[0] == list(range(1, 11))


def test_the_default_limit_is_1000(api: APIClient, tenant_a: TenantWorld) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    for start in range(1, 1001, 100):
        ids = range(start, start + 100)
        body = make_prekeys(identity.signing_key, ids=ids).body(with_signed=False)
        assert _put(api, body).status_code == 200

    more = make_prekeys(identity.signing_key, ids=[5000])
    over = _put(api, more.body(with_signed=False))

    assert (over.status_code, over.json()["code"]) == (409, "prekey_limit_reached")


def test_the_same_id_with_another_key_is_409(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    _put(api, make_prekeys(identity.signing_key, ids=[1, 2]).body())
    other = {
        "one_time_prekeys": [
            {"id": 3, "public_key": b64(bytes(PrivateKey.generate().public_key))},
            {"id": 2, "public_key": b64(bytes(PrivateKey.generate().public_key))},
        ]
    }

    response = _put(api, other)

    assert (response.status_code, response.json()["code"]) == (
        409,
        "prekey_id_conflict",
    )
    assert response.json()["fields"] == {"one_time_prekeys": [2]}
    assert _stored(tenant_a, identity)[0] == [1, 2]


@pytest.mark.parametrize(
    "bad",
    [
        {"one_time_prekeys": [{"id": 0, "public_key": b64(b"k" * 32)}]},
        {"one_time_prekeys": [{"id": 2**32, "public_key": b64(b"k" * 32)}]},
        {"one_time_prekeys": [{"id": 1, "public_key": b64(b"k" * 31)}]},
        {"one_time_prekeys": [{"id": 1, "public_key": "a2V5"}] * 2},
        {"one_time_prekeys": []},
    ],
)
def test_malformed_uploads_are_refused(
    api: APIClient, tenant_a: TenantWorld, bad: dict[str, Any]
) -> None:
    _as(api, tenant_a.agent_device)
    response = _put(api, bad)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")


def test_a_new_signed_prekey_replaces_the_old_one(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    identity = tenant_a.agent_device
    _as(api, identity)
    _put(api, make_prekeys(identity.signing_key, signed_id=1, ids=[1]).body())

    newer = make_prekeys(identity.signing_key, signed_id=2, ids=[])
    replaced = _put(api, {"signed_prekey": newer.body()["signed_prekey"]})
    same_id = make_prekeys(identity.signing_key, signed_id=2, ids=[])
    conflict = _put(api, {"signed_prekey": same_id.body()["signed_prekey"]})

    assert replaced.json() == {"one_time_prekeys": 1}
    assert (conflict.status_code, conflict.json()["code"]) == (
        409,
        "prekey_id_conflict",
    )
    assert _stored(tenant_a, identity) == ([1], 2)
    with tenant_scope(tenant_a.tenant.pk):
        stored = SignedPrekey.objects.get(device=identity.device)
    assert bytes(stored.public_key) == newer.signed_public
