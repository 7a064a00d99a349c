"""GET /devices/me/inbox and POST /devices/me/inbox/ack."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from messaging import ratelimit
from messaging.models import Delivery, DeviceQueue, Room
from messaging.tests.helpers import as_device, envelope, make_room, post_message
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    ratelimit.reset()


def _send(
    api: APIClient, world: TenantWorld, room: Room, n: int
) -> list[dict[str, Any]]:
    as_device(api, world.owner_device.device)
    sent = []
    for _ in range(n):
        body: dict[str, Any] = {
            "client_message_id": uuid.uuid4().hex,
            "envelopes": [envelope(world.agent_device.device)],
        }
        response = post_message(api, room, body)
        assert response.status_code == 201
        sent.append(
            {**response.json(), "ciphertext": body["envelopes"][0]["ciphertext"]}
        )
    return sent


def test_the_inbox_returns_envelopes_in_order_after_a_seq(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    sent = _send(api, w, room, 5)
    as_device(api, w.agent_device.device)

    page = api.get("/api/v1/devices/me/inbox?after=1&limit=3").json()["envelopes"]

    assert [e["seq"] for e in page] == [2, 3, 4]
    assert page[0] == {
        "seq": 2,
        "message_id": sent[1]["message_id"],
        "room_id": str(room.pk),
        "sender_device_id": str(w.owner_device.device.pk),
        "sender_member_id": str(w.owner.pk),
        "ciphertext": sent[1]["ciphertext"],
        "server_ts": page[0]["server_ts"],
    }
    assert base64.b64decode(page[0]["ciphertext"])


def test_ack_deletes_up_to_the_seq_and_keeps_the_rest(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    _send(api, w, room, 4)
    as_device(api, w.agent_device.device)

    response = api.post("/api/v1/devices/me/inbox/ack", {"up_to_seq": 3}, format="json")
    beyond = api.post("/api/v1/devices/me/inbox/ack", {"up_to_seq": 99}, format="json")

    assert response.json() == {"acked_seq": 3, "deleted": 3}
    assert beyond.json() == {"acked_seq": 4, "deleted": 1}
    assert api.get("/api/v1/devices/me/inbox").json()["envelopes"] == []
    with tenant_scope(w.tenant.pk):
        queue = DeviceQueue.objects.get(device=w.agent_device.device)
        assert (queue.acked_seq, queue.depth, queue.last_seq) == (4, 0, 4)


def test_a_device_sees_and_acks_only_its_own_queue(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    room = make_room(tenant_b.owner, tenant_b.agent)
    _send(api, tenant_b, room, 2)
    as_device(api, tenant_a.agent_device.device)

    inbox = api.get("/api/v1/devices/me/inbox").json()
    ack = api.post(
        "/api/v1/devices/me/inbox/ack", {"up_to_seq": 2}, format="json"
    ).json()

    assert inbox == {"envelopes": []}
    assert ack == {"acked_seq": 0, "deleted": 0}
    with tenant_scope(tenant_b.tenant.pk):
        assert Delivery.objects.count() == 2


@pytest.mark.parametrize("query", ["after=-1", "after=x", "limit=0", "limit=501"])
def test_bad_paging_is_refused(
    api: APIClient, tenant_a: TenantWorld, query: str
) -> None:
    as_device(api, tenant_a.agent_device.device)

    response = api.get(f"/api/v1/devices/me/inbox?{query}")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_the_inbox_needs_a_token(api: APIClient, tenant_a: TenantWorld) -> None:
    response = api.get("/api/v1/devices/me/inbox")

    assert response.status_code == 401
