"""Several daphne workers sharing PostgreSQL and Redis: relay across workers.

These start real worker processes on loopback against the shared Redis (or
REDIS_URL), and are skipped, saying why, when no Redis answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from messaging.models import Delivery
from messaging.tests import cluster
from messaging.tests.helpers import make_room
from messaging.tests.net_client import (
    open_relay,
    recv_json,
    rest,
    send_frame,
)
from messaging.tests.relay_client import db
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.slow,
]

REDIS = cluster.redis_url()
if REDIS is None:
    pytestmark.append(
        pytest.mark.skip(reason="no Redis at REDIS_URL or 127.0.0.1:6379")
    )


@pytest.fixture(scope="module")
def workers(
    django_db_setup: None, django_db_blocker: Any
) -> Iterator[list[cluster.Worker]]:
    assert REDIS is not None
    with django_db_blocker.unblock():
        with cluster.relay_cluster(2, REDIS) as running:
            yield running


@db
def _room(*members: Any) -> Any:
    return make_room(*members)


async def test_owner_and_agent_on_two_workers_talk_and_revocation_closes_4403(
    workers: list[cluster.Worker], tenant_a: TenantWorld
) -> None:
    w = tenant_a
    one, two = workers
    room = await _room(w.owner, w.agent)
    owner, _ = await open_relay(one.ws, w.owner_device.device)
    agent, _ = await open_relay(two.ws, w.agent_device.device)
    assert (await recv_json(owner))["type"] == "queue_empty"
    assert (await recv_json(agent))["type"] == "queue_empty"

    # Owner -> agent and agent -> owner across the two workers.
    await owner.send(send_frame(room.pk, [w.agent_device.device], cid="o1"))
    sent = await recv_json(owner)
    got = await recv_json(agent)
    assert sent["type"] == "sent" and got["message_id"] == sent["message_id"]
    await agent.send(json.dumps({"type": "ack", "up_to_seq": got["seq"]}))
    await agent.send(send_frame(room.pk, [w.owner_device.device], cid="a1"))
    reply_sent = await recv_json(agent)
    reply = await recv_json(owner)
    assert (
        reply["type"] == "envelope" and reply["message_id"] == reply_sent["message_id"]
    )

    # A sender keeps sending to the agent while an admin revokes it on worker 1.
    accepted: list[tuple[float, str]] = []
    refused: list[float] = []
    stop = asyncio.Event()

    async def keep_sending() -> None:
        async with rest(one.http, w.owner_device.device) as client:
            while not stop.is_set():
                body = json.loads(send_frame(room.pk, [w.agent_device.device]))
                response = await client.post(
                    f"/api/v1/rooms/{room.pk}/messages", json=body
                )
                if response.status_code == 201:
                    accepted.append((time.monotonic(), response.json()["message_id"]))
                else:
                    assert response.status_code == 410, one.log()[-6000:]
                    refused.append(time.monotonic())
                await asyncio.sleep(0.02)

    received: list[str] = []

    async def agent_reads() -> int | None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                frame = json.loads(await agent.recv())
                if frame["type"] == "envelope":
                    received.append(frame["message_id"])
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    reader = asyncio.create_task(agent_reads())
    sender = asyncio.create_task(keep_sending())
    await asyncio.sleep(0.5)
    async with rest(one.http, w.admin_device.device) as admin:
        started = time.monotonic()
        response = await admin.post(
            f"/api/v1/devices/{w.agent_device.device.pk}/revoke"
        )
        revoked_at = time.monotonic()
    assert response.status_code == 200, one.log()[-8000:]
    code = await asyncio.wait_for(reader, 5)
    closed_after = time.monotonic() - started
    await asyncio.sleep(0.5)
    stop.set()
    await sender

    assert code == 4403
    assert closed_after < 1.0
    assert refused, "sends after the revocation must be refused as stale"
    assert all(at < revoked_at for at, _ in accepted)
    assert set(received) <= {mid for _, mid in accepted}

    @db
    def queued_for_agent() -> int:
        with tenant_scope(w.tenant.pk):
            return Delivery.objects.filter(device=w.agent_device.device).count()

    assert await queued_for_agent() == 0
    await owner.close()


async def test_an_idle_socket_survives_the_channel_layer_poll_timeout(
    workers: list[cluster.Worker], tenant_a: TenantWorld
) -> None:
    """Idle sockets outlive redis-py's default 5 s socket timeout."""
    w = tenant_a
    room = await _room(w.owner, w.agent)
    agent, _ = await open_relay(workers[1].ws, w.agent_device.device)
    await recv_json(agent)
    await asyncio.sleep(12)

    async with rest(workers[0].http, w.owner_device.device) as client:
        body = json.loads(send_frame(room.pk, [w.agent_device.device]))
        response = await client.post(f"/api/v1/rooms/{room.pk}/messages", json=body)
    frame = await recv_json(agent, timeout=3)

    assert response.status_code == 201
    assert frame["message_id"] == response.json()["message_id"]
    await agent.close()


async def test_a_query_string_token_never_reaches_the_worker_log(
    workers: list[cluster.Worker], tenant_a: TenantWorld
) -> None:
    from websockets.asyncio.client import connect

    from tests.support import device_token

    token = device_token(tenant_a.agent_device.device)
    url = f"{workers[0].ws}?token={token}"
    origin: Any = "http://127.0.0.1"
    async with connect(url, origin=origin, open_timeout=10) as ws:
        hello = json.loads(await ws.recv())
    await asyncio.sleep(0.3)

    assert hello["type"] == "hello"
    assert "/ws/v1/relay" in workers[0].log()
    assert token not in workers[0].log()
    assert token.split(".")[2] not in workers[0].log()


async def test_a_device_s_send_budget_is_shared_by_every_worker_and_transport(
    tenant_a: TenantWorld,
) -> None:
    assert REDIS is not None
    w = tenant_a
    room = await _room(w.owner, w.agent)
    body = json.loads(send_frame(room.pk, [w.agent_device.device]))
    with cluster.relay_cluster(2, REDIS, AV_SEND_RATE="0.1", AV_SEND_BURST="4") as (
        one,
        two,
    ):
        async with rest(one.http, w.owner_device.device) as first:
            statuses = [
                (
                    await first.post(
                        f"/api/v1/rooms/{room.pk}/messages",
                        json=body | {"client_message_id": f"r{n}"},
                    )
                ).status_code
                for n in range(2)
            ]
        owner, _ = await open_relay(two.ws, w.owner_device.device)
        assert (await recv_json(owner))["type"] == "queue_empty"
        answers = []
        for n in range(3):
            await owner.send(send_frame(room.pk, [w.agent_device.device], cid=f"w{n}"))
            answers.append(await recv_json(owner))
        await owner.close()

    # Four sends fit the budget wherever they came from; the fifth does not.
    assert statuses == [201, 201]
    assert [a["type"] for a in answers] == ["sent", "sent", "error"]
    assert answers[2]["code"] == "rate_limited"
    assert answers[2]["retry_after"] > 0
