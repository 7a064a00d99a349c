"""Delivery under stress, on real workers and Redis.

- 200 messages from 4 parallel senders while the receiver reconnects 20
  times arrive exactly once, in order, without a gap.
- With channel-layer capacity 5, a burst of 50 sent while the receiver's
  worker cannot drain its channel (most wake-ups dropped) arrives complete.
- Redis restarted mid-stream: nothing committed is lost, and no sender got
  success for a message that was not stored.
- With Redis down, sockets open, send and receive within a worker, and the
  sockets opened before the outage stay open.
- A client that never reads is closed with 4408, and the worker's memory
  stays bounded by the in-flight window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from enrollment.models import Device
from messaging.actions import do_send_message
from messaging.models import Delivery, Message
from messaging.store import Envelope
from messaging.tests import cluster
from messaging.tests.helpers import envelope, make_room
from messaging.tests.net_client import open_relay, recv_json, rest
from messaging.tests.relay_client import db
from tenants.scope import tenant_scope
from tests.support import TenantWorld, make_device

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


@pytest.fixture
def unblocked(django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        yield


@db
def _room(*members: Any) -> Any:
    return make_room(*members)


@db
def _extra_device(world: TenantWorld, member: Any, name: str) -> Device:
    with tenant_scope(world.tenant.pk):
        return make_device(member, name=name).device


@db
def _stored_for(world: TenantWorld, device: Device) -> dict[str, int]:
    """Return message id -> seq of every delivery ever stored for ``device``."""
    with tenant_scope(world.tenant.pk):
        return {
            str(mid): seq
            for mid, seq in Delivery.objects.filter(device=device).values_list(
                "message_id", "seq"
            )
        }


@db
def _messages_in(world: TenantWorld, room: Any) -> set[str]:
    with tenant_scope(world.tenant.pk):
        return {
            str(mid)
            for mid in Message.objects.filter(room=room).values_list("pk", flat=True)
        }


def _body(room_id: Any, devices: list[Device]) -> dict[str, Any]:
    return {
        "client_message_id": uuid.uuid4().hex,
        "envelopes": [envelope(device) for device in devices],
    }


class Receiver:
    """A receiver that checks order and gaps per connection and overall."""

    def __init__(self) -> None:
        self.processed = 0  # highest seq accepted, as an SDK would track it
        self.by_seq: dict[int, str] = {}
        self.connections = 0
        self.duplicates = 0

    def take(self, frame: dict[str, Any], previous_in_connection: int | None) -> None:
        seq = int(frame["seq"])
        if previous_in_connection is not None:
            assert seq == previous_in_connection + 1, (previous_in_connection, seq)
        else:
            assert seq <= self.processed + 1, (
                "gap after reconnect",
                self.processed,
                seq,
            )
        if seq in self.by_seq:
            assert self.by_seq[seq] == frame["message_id"], "seq reused"
            self.duplicates += 1
        else:
            self.by_seq[seq] = frame["message_id"]
        self.processed = max(self.processed, seq)


async def test_200_messages_from_4_senders_survive_20_reconnects(
    unblocked: None, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    assert REDIS is not None
    phone = await _extra_device(w, w.owner, "phone")
    room = await _room(w.owner, w.admin, w.member, w.agent)
    senders = [
        w.owner_device.device,
        phone,
        w.admin_device.device,
        w.member_device.device,
    ]
    target = w.agent_device.device
    everyone = [*senders, target]

    with cluster.relay_cluster(2, REDIS) as workers:
        sent_ids: list[str] = []

        async def sender(index: int, device: Device) -> None:
            others = [d for d in everyone if d.pk != device.pk]
            async with rest(workers[index % 2].http, device) as client:
                for _ in range(50):
                    body = _body(room.pk, others)
                    response = await client.post(
                        f"/api/v1/rooms/{room.pk}/messages", json=body
                    )
                    assert response.status_code == 201, response.text
                    sent_ids.append(response.json()["message_id"])
                    await asyncio.sleep(random.uniform(0.005, 0.03))

        receiver = Receiver()
        trace: list[str] = []

        async def receive() -> None:
            while len(receiver.by_seq) < 200:
                worker = workers[receiver.connections % 2]
                receiver.connections += 1
                churning = receiver.connections <= 20
                trace.append(f"open {receiver.connections} {time.monotonic():.2f}")
                ws, hello = await open_relay(worker.ws, target, max_queue=None)
                trace.append(f"hello {hello['last_acked_seq']} {time.monotonic():.2f}")
                previous: int | None = None
                budget = random.randint(1, 8)
                try:
                    while True:
                        timeout = 0.3 if churning else 15
                        frame = await recv_json(ws, timeout=timeout)
                        if frame["type"] != "envelope":
                            continue
                        receiver.take(frame, previous)
                        previous = int(frame["seq"])
                        # Acks are sometimes left unsent, to force redelivery.
                        if random.random() < 0.7:
                            await ws.send(
                                json.dumps({"type": "ack", "up_to_seq": previous})
                            )
                        budget -= 1
                        if churning and budget == 0:
                            break
                        if len(receiver.by_seq) >= 200:
                            break
                except TimeoutError:
                    trace.append(f"timeout {time.monotonic():.2f}")
                trace.append(f"close {previous} {time.monotonic():.2f}")
                if receiver.connections % 3 == 0:
                    ws.transport.abort()  # a crash: no close handshake
                else:
                    await ws.close()
                trace.append(f"closed {time.monotonic():.2f}")

        try:
            await asyncio.wait_for(
                asyncio.gather(
                    receive(), *(sender(i, d) for i, d in enumerate(senders))
                ),
                timeout=90,
            )
        except TimeoutError:
            raise AssertionError(
                f"stalled: sent {len(sent_ids)}, received {len(receiver.by_seq)}, "
                f"connections {receiver.connections}, last {receiver.processed}\n"
                + " | ".join(trace)
                + "\n"
                + workers[0].log()[-3000:]
                + workers[1].log()[-3000:]
            ) from None

    assert receiver.connections > 20
    assert sorted(receiver.by_seq) == list(range(1, 201))
    assert sorted(receiver.by_seq.values()) == sorted(sent_ids)
    assert len(set(sent_ids)) == 200


async def test_a_burst_of_50_reaches_a_receiver_whose_wakeups_were_dropped(
    unblocked: None, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    assert REDIS is not None
    room = await _room(w.owner, w.agent)
    target = w.agent_device.device
    extra = {"AV_CHANNEL_CAPACITY": "5", "AV_RELAY_SWEEP_INTERVAL": "60"}

    with cluster.relay_cluster(2, REDIS, **extra) as (one, two):
        # A receiver on worker 2 that does not read its socket.
        ws, _ = await open_relay(two.ws, target, max_queue=1)
        await asyncio.sleep(0.5)

        # Worker 2 cannot drain its channel while stopped: 50 wake-ups meet a
        # capacity of 5 and the rest are dropped by the channel layer.
        os.kill(two.proc.pid, signal.SIGSTOP)
        try:
            async with rest(one.http, w.owner_device.device) as client:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            f"/api/v1/rooms/{room.pk}/messages",
                            json=_body(room.pk, [target]),
                        )
                        for _ in range(50)
                    )
                )
            await asyncio.sleep(0.5)
        finally:
            os.kill(two.proc.pid, signal.SIGCONT)
        assert [r.status_code for r in responses] == [201] * 50

        # The sweep is 60 s away: the few surviving wake-ups must suffice.
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while len(got) < 50 and time.monotonic() < deadline:
            frame = await recv_json(ws, timeout=15)
            if frame["type"] == "envelope":
                got.append(frame)
        await ws.close()

    assert [f["seq"] for f in got] == list(range(1, 51))
    assert {f["message_id"] for f in got} == {r.json()["message_id"] for r in responses}


async def test_a_redis_restart_mid_stream_loses_nothing_committed(
    unblocked: None, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    target = w.agent_device.device
    redis = cluster.RedisServer()
    redis.start()
    successes: set[str] = set()
    received: dict[int, str] = {}
    stop_sending = asyncio.Event()

    try:
        with cluster.relay_cluster(2, redis.url) as workers:

            async def rest_sender() -> None:
                async with rest(workers[0].http, w.owner_device.device) as client:
                    while not stop_sending.is_set():
                        with contextlib.suppress(Exception):
                            response = await client.post(
                                f"/api/v1/rooms/{room.pk}/messages",
                                json=_body(room.pk, [target]),
                            )
                            if response.status_code == 201:
                                successes.add(response.json()["message_id"])
                        await asyncio.sleep(0.02)

            async def ws_sender() -> None:
                while not stop_sending.is_set():
                    try:
                        ws, _ = await open_relay(workers[1].ws, w.owner_device.device)
                        while not stop_sending.is_set():
                            cid = uuid.uuid4().hex
                            await ws.send(
                                json.dumps(
                                    {
                                        "type": "send",
                                        "room_id": str(room.pk),
                                        "client_message_id": cid,
                                        "envelopes": [envelope(target)],
                                    }
                                )
                            )
                            while True:
                                frame = await recv_json(ws, timeout=5)
                                if frame["type"] == "sent":
                                    assert frame["client_message_id"] == cid
                                    successes.add(frame["message_id"])
                                    break
                                if frame["type"] == "error":
                                    break
                            await asyncio.sleep(0.02)
                        await ws.close()
                    except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
                        await asyncio.sleep(0.2)

            async def receiver(until: asyncio.Event) -> None:
                turn = 0
                while True:
                    turn += 1
                    try:
                        ws, _ = await open_relay(workers[turn % 2].ws, target)
                        while True:
                            frame = await recv_json(ws, timeout=1)
                            if frame["type"] == "envelope":
                                seq = int(frame["seq"])
                                assert (
                                    received.get(seq, frame["message_id"])
                                    == frame["message_id"]
                                )
                                received[seq] = frame["message_id"]
                                await ws.send(
                                    json.dumps({"type": "ack", "up_to_seq": seq})
                                )
                    except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
                        if until.is_set():
                            return
                        await asyncio.sleep(0.2)

            done = asyncio.Event()
            tasks = [
                asyncio.create_task(rest_sender()),
                asyncio.create_task(ws_sender()),
                asyncio.create_task(receiver(done)),
            ]
            await asyncio.sleep(2)
            redis.stop()
            await asyncio.sleep(2)
            redis.start()
            await asyncio.sleep(3)
            stop_sending.set()
            await asyncio.gather(*tasks[:2])

            stored = await _messages_in(w, room)
            deadline = time.monotonic() + 30
            while set(received.values()) != stored and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            done.set()
            await asyncio.wait_for(tasks[2], 10)
    finally:
        redis.cleanup()

    assert successes, "some sends must have succeeded"
    assert successes <= stored, "a sender got success for a message not stored"
    assert set(received.values()) == stored, "a committed message was not delivered"
    assert sorted(received) == list(range(1, len(stored) + 1))


async def test_sockets_open_send_and_stay_open_while_redis_is_down(
    unblocked: None, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    target = w.agent_device.device
    redis = cluster.RedisServer()
    redis.start()
    try:
        with cluster.relay_cluster(1, redis.url) as (worker,):
            before, _ = await open_relay(worker.ws, target)
            await recv_json(before)  # queue_empty
            redis.stop()

            # Opening needs no Redis: hello comes, and a send is stored.
            sender, hello = await open_relay(worker.ws, w.owner_device.device)
            assert hello["type"] == "hello"
            await sender.send(
                json.dumps(
                    {
                        "type": "send",
                        "room_id": str(room.pk),
                        "client_message_id": "during-outage",
                        "envelopes": [envelope(target)],
                    }
                )
            )
            frames = [await recv_json(sender, timeout=5) for _ in range(2)]
            assert [f["type"] for f in frames] == ["queue_empty", "sent"]

            # The socket opened before the outage is still served.
            pushed = await recv_json(before, timeout=5)
            assert pushed["type"] == "envelope"
            assert pushed["message_id"] == frames[1]["message_id"]
            await before.close()
            await sender.close()
    finally:
        redis.cleanup()


async def test_a_client_that_never_reads_is_closed_4408_with_bounded_memory(
    unblocked: None, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    assert REDIS is not None
    room = await _room(w.owner, w.agent)
    target = w.agent_device.device
    count, size = 800, 96 * 1024

    @db
    def backlog() -> None:
        payload = os.urandom(size)
        with tenant_scope(w.tenant.pk):
            for n in range(count):
                do_send_message(
                    room.pk,
                    tenant_id=w.tenant.pk,
                    sender=w.owner_device.device,
                    client_message_id=f"b{n}",
                    envelopes=[Envelope(target.pk, payload)],
                )

    await backlog()
    extra = {"AV_RELAY_ACK_TIMEOUT": "3"}
    with cluster.relay_cluster(1, REDIS, **extra) as (worker,):
        # Warm the worker up, then take its baseline.
        warm, _ = await open_relay(worker.ws, w.owner_device.device)
        await warm.close()
        await asyncio.sleep(0.5)
        baseline = worker.rss_kib()

        ws, _ = await open_relay(worker.ws, target, max_queue=1, max_size=None)
        peak = baseline
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and "with 4408" not in worker.log():
            peak = max(peak, worker.rss_kib())
            await asyncio.sleep(0.1)
        closed = "with 4408" in worker.log()
        for _ in range(10):
            peak = max(peak, worker.rss_kib())
            await asyncio.sleep(0.1)
        ws.transport.abort()

    pushed_all = count * size * 4 // 3 // 1024
    growth = peak - baseline
    assert closed, "the socket was not closed with 4408"
    # The in-flight window (8 MiB of ciphertext) bounds what is pushed.
    assert growth < 40 * 1024, f"worker grew by {growth} KiB (all: {pushed_all} KiB)"
    assert await _stored_for(w, target) != {}
