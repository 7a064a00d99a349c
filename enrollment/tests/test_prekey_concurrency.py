"""Concurrent claims of one device's bundle, on real threads and connections."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from enrollment.models import ClaimedPrekeyId, OneTimePrekey
from enrollment.tests.helpers import b64, make_prekeys
from messaging.models import Room, RoomMembership
from tenants.scope import tenant_scope
from tests.support import TenantWorld

THREADS = 20


def _claim_together(world: TenantWorld) -> list[Any]:
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    token = world.owner_device.token

    def claim(index: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        try:
            barrier.wait(timeout=30)
            response = client.post(f"/api/v1/members/{world.agent.pk}/prekey-bundles")
            results[index] = (response.status_code, response.json())
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_claims_never_share_a_one_time_prekey(
    tenant_a: TenantWorld,
) -> None:
    world = tenant_a
    agent = world.agent_device
    with tenant_scope(world.tenant.pk):
        room = Room.objects.create(tenant=world.tenant, name="r")
        for member in (world.owner, world.agent):
            RoomMembership.objects.create(tenant=world.tenant, room=room, member=member)
    published = make_prekeys(agent.signing_key, ids=range(1, 16))
    uploader = APIClient()
    uploader.credentials(HTTP_AUTHORIZATION=f"Bearer {agent.token}")
    uploaded = uploader.put(
        "/api/v1/devices/me/prekeys", published.body(), format="json"
    )
    assert uploaded.status_code == 200

    with override_settings(ENROLLMENT={"BUNDLE_RATE": "1000/m"}):
        results = _claim_together(world)

    assert all(status == 200 for status, _ in results), results
    handed = [body[0]["one_time_prekey"] for _, body in results]
    ids = [item["id"] for item in handed if item is not None]
    assert len(ids) == len(set(ids)) == 15
    assert handed.count(None) == THREADS - 15
    by_id = {key_id: b64(public) for key_id, public in published.one_time}
    assert all(item["public_key"] == by_id[item["id"]] for item in handed if item)

    with tenant_scope(world.tenant.pk):
        assert OneTimePrekey.objects.filter(device=agent.device).count() == 0
        tombstones = set(
            ClaimedPrekeyId.objects.filter(device=agent.device).values_list(
                "key_id", flat=True
            )
        )
    assert tombstones == set(range(1, 16))

    # Re-uploading the consumed ids brings none of them back.
    again = uploader.put(
        "/api/v1/devices/me/prekeys",
        published.body(with_signed=False),
        format="json",
    )
    assert again.status_code == 409
    assert again.json()["code"] == "prekey_id_reused"
    assert uploader.get("/api/v1/devices/me/prekeys").json()["one_time_prekeys"] == 0
