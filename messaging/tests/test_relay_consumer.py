"""RelayConsumer through the full ASGI stack: auth, frames, delivery, closes."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from agentvault.auth.tokens import get_registry
from enrollment.models import Device
from enrollment.signals import device_revoked
from messaging import ratelimit, store
from messaging.actions import do_send_message
from messaging.models import Delivery, Room
from messaging.store import Envelope
from messaging.tests.helpers import envelope, make_room
from messaging.tests.relay_client import (
    close_code,
    communicator,
    db,
    frames_until,
    open_socket,
    send_json,
)
from tenants.scope import tenant_scope
from tests.support import TenantWorld, device_token, make_device

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("relay_pool_closed"),
]


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    ratelimit.reset()


@db
def _room(*members: Any) -> Room:
    return make_room(*members)


@db
def _store(
    world: TenantWorld, room: Room, sender: Device, to: list[Device], n: int = 1
) -> list[str]:
    ids = []
    with tenant_scope(world.tenant.pk):
        for _ in range(n):
            result = do_send_message(
                room.pk,
                tenant_id=world.tenant.pk,
                sender=sender,
                client_message_id=uuid.uuid4().hex,
                envelopes=[Envelope(d.pk, b"c" * 16) for d in to],
            )
            ids.append(str(result.message_id))
    return ids


@db
def _revoke(world: TenantWorld, device: Device) -> None:
    with tenant_scope(world.tenant.pk):
        device.status = Device.Status.REVOKED
        device.revoked_at = timezone.now()
        device.save(update_fields=["status", "revoked_at"])
        device_revoked.send(sender=Device, device=device)


@db
def _deliveries(world: TenantWorld, device: Device) -> list[int]:
    with tenant_scope(world.tenant.pk):
        return list(
            Delivery.objects.filter(device=device)
            .order_by("seq")
            .values_list("seq", flat=True)
        )


# --- Authentication -------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query", "subprotocol"])
async def test_a_device_token_is_accepted_from_each_place(
    tenant_a: TenantWorld, via: str
) -> None:
    device = tenant_a.agent_device.device
    comm, hello = await open_socket(device, via=via, subprotocols=["agentvault.v1"])

    assert hello == {"type": "hello", "device_id": str(device.pk), "last_acked_seq": 0}
    assert (await comm.receive_json_from(timeout=5))["type"] == "queue_empty"
    await comm.disconnect()


async def test_the_token_subprotocol_is_never_echoed(tenant_a: TenantWorld) -> None:
    token = device_token(tenant_a.agent_device.device)
    comm = communicator(token, via="subprotocol", subprotocols=["agentvault.v1"])
    connected, chosen = await comm.connect(timeout=10)

    assert connected
    assert chosen == "agentvault.v1"
    await comm.disconnect()


@pytest.mark.parametrize("token", [None, "not-a-jwt", "eyJhbGciOiJub25lIn0.e30."])
async def test_a_missing_or_bad_token_closes_with_4401(
    db: None, token: str | None
) -> None:
    comm = communicator(token)
    await comm.connect(timeout=10)

    assert await close_code(comm) == 4401


async def test_a_revoked_device_is_refused_with_4403(tenant_a: TenantWorld) -> None:
    device = tenant_a.agent_device.device
    await _revoke(tenant_a, device)
    comm = communicator(device_token(device))
    await comm.connect(timeout=10)

    assert await close_code(comm) == 4403


async def test_a_pending_device_is_refused_with_4403(tenant_a: TenantWorld) -> None:
    pending = await database_sync_to_async(
        lambda: _in_scope(
            tenant_a,
            lambda: make_device(tenant_a.agent, status=Device.Status.PENDING).device,
        )
    )()
    comm = communicator(device_token(pending))
    await comm.connect(timeout=10)

    assert await close_code(comm) == 4403


def _in_scope(world: TenantWorld, fn: Any) -> Any:
    with tenant_scope(world.tenant.pk):
        return fn()


async def test_the_socket_closes_with_4401_when_its_token_expires(
    tenant_a: TenantWorld,
) -> None:
    device = tenant_a.agent_device.device
    lifetime = get_registry().builtin.lifetime
    token, _ = get_registry().builtin.issue(
        device_id=device.pk,
        member_id=device.member_id,
        tenant_id=device.tenant_id,
        now=int(time.time()) - lifetime + 2,
    )
    comm = communicator(token)
    await comm.connect(timeout=10)
    assert (await comm.receive_json_from(timeout=5))["type"] == "hello"

    started = time.monotonic()
    assert await close_code(comm, timeout=10) == 4401
    assert 0.5 < time.monotonic() - started < 5


# --- Delivery ----------------------------------------------------------------------


async def test_backlog_then_queue_empty_then_live_envelopes(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    first = await _store(w, room, w.owner_device.device, [w.agent_device.device], n=3)
    comm, _ = await open_socket(w.agent_device.device)

    backlog = await frames_until(comm, "queue_empty")
    live_ids = await _store(
        w, room, w.owner_device.device, [w.agent_device.device], n=2
    )
    live = [await comm.receive_json_from(timeout=5) for _ in range(2)]

    assert [f["type"] for f in backlog] == ["envelope"] * 3 + ["queue_empty"]
    assert [f["seq"] for f in backlog[:3]] == [1, 2, 3]
    assert [f["message_id"] for f in backlog[:3]] == first
    assert [(f["type"], f["seq"]) for f in live] == [("envelope", 4), ("envelope", 5)]
    assert [f["message_id"] for f in live] == live_ids
    entry = live[0]
    assert set(entry) == {
        "type",
        "seq",
        "message_id",
        "room_id",
        "sender_device_id",
        "sender_member_id",
        "ciphertext",
        "server_ts",
    }
    assert entry["room_id"] == str(room.pk)
    assert entry["sender_device_id"] == str(w.owner_device.device.pk)
    assert entry["sender_member_id"] == str(w.owner.pk)
    assert base64.b64decode(entry["ciphertext"]) == b"c" * 16
    await comm.disconnect()


async def test_acked_envelopes_are_deleted_and_not_sent_again(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    agent = w.agent_device.device
    room = await _room(w.owner, w.agent)
    await _store(w, room, w.owner_device.device, [agent], n=4)
    comm, _ = await open_socket(agent)
    await frames_until(comm, "queue_empty")

    await send_json(comm, type="ack", up_to_seq=2)
    await send_json(comm, type="ping")
    assert (await comm.receive_json_from(timeout=5))["type"] == "pong"
    await comm.disconnect()

    assert await _deliveries(w, agent) == [3, 4]
    comm, hello = await open_socket(agent)
    backlog = await frames_until(comm, "queue_empty")
    assert hello["last_acked_seq"] == 2
    assert [f.get("seq") for f in backlog] == [3, 4, None]
    await comm.disconnect()


async def test_no_more_than_the_window_is_in_flight(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = {"MAX_IN_FLIGHT": 5}
    w = tenant_a
    agent = w.agent_device.device
    room = await _room(w.owner, w.agent)
    await _store(w, room, w.owner_device.device, [agent], n=8)
    comm, _ = await open_socket(agent)

    first = [await comm.receive_json_from(timeout=5) for _ in range(5)]
    assert [f["seq"] for f in first] == [1, 2, 3, 4, 5]
    assert await comm.receive_nothing(timeout=0.5)

    await send_json(comm, type="ack", up_to_seq=3)
    rest = await frames_until(comm, "queue_empty")
    assert [f.get("seq") for f in rest] == [6, 7, 8, None]
    await comm.disconnect()


async def test_the_byte_window_holds_back_large_envelopes_until_acked(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = {"MAX_IN_FLIGHT_BYTES": 40}
    w = tenant_a
    agent = w.agent_device.device
    room = await _room(w.owner, w.agent)
    await _store(w, room, w.owner_device.device, [agent], n=5)  # 16 bytes each
    comm, _ = await open_socket(agent)

    first = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert [f["seq"] for f in first] == [1, 2]
    assert await comm.receive_nothing(timeout=0.5)

    await send_json(comm, type="ack", up_to_seq=2)
    more = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert [f["seq"] for f in more] == [3, 4]
    await comm.disconnect()


async def test_a_socket_that_does_not_ack_is_closed_with_4408(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = {"ACK_TIMEOUT": 1.0}
    w = tenant_a
    room = await _room(w.owner, w.agent)
    await _store(w, room, w.owner_device.device, [w.agent_device.device], n=1)
    comm, _ = await open_socket(w.agent_device.device)
    await frames_until(comm, "queue_empty")

    assert await close_code(comm, timeout=5) == 4408
    assert await _deliveries(w, w.agent_device.device) == [1]


# --- Sending over the socket ---------------------------------------------------------


async def test_a_send_frame_is_stored_relayed_and_confirmed(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    owner, _ = await open_socket(w.owner_device.device)
    agent, _ = await open_socket(w.agent_device.device)
    await frames_until(owner, "queue_empty")
    await frames_until(agent, "queue_empty")

    env = envelope(w.agent_device.device)
    await send_json(
        owner,
        type="send",
        room_id=str(room.pk),
        client_message_id="m1",
        envelopes=[env],
    )
    sent = await owner.receive_json_from(timeout=5)
    got = await agent.receive_json_from(timeout=5)
    await send_json(
        owner,
        type="send",
        room_id=str(room.pk),
        client_message_id="m1",
        envelopes=[env],
    )
    again = await owner.receive_json_from(timeout=5)

    assert sent["type"] == "sent" and sent["client_message_id"] == "m1"
    assert got["type"] == "envelope" and got["message_id"] == sent["message_id"]
    assert got["ciphertext"] == env["ciphertext"]
    assert again["message_id"] == sent["message_id"]
    assert await agent.receive_nothing(timeout=0.3)
    assert await _deliveries(w, w.agent_device.device) == [1]
    await owner.disconnect()
    await agent.disconnect()


async def test_send_refusals_are_error_frames_with_the_rest_codes(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    w = tenant_a
    phone = await database_sync_to_async(
        lambda: _in_scope(w, lambda: make_device(w.owner, name="phone").device)
    )()
    old = await database_sync_to_async(
        lambda: _in_scope(
            w,
            lambda: (
                make_device(w.owner, name="old", status=Device.Status.REVOKED).device
            ),
        )
    )()
    room = await _room(w.owner, w.agent)
    theirs = await _room(tenant_b.owner, tenant_b.agent)
    agent, _ = await open_socket(w.agent_device.device)
    await frames_until(agent, "queue_empty")

    async def send(room_id: Any, *devices: Any) -> dict[str, Any]:
        await send_json(
            agent,
            type="send",
            room_id=str(room_id),
            client_message_id="c",
            envelopes=[envelope(d) for d in devices],
        )
        frame: dict[str, Any] = await agent.receive_json_from(timeout=5)
        return frame

    missing = await send(room.pk, w.owner_device.device)
    stale = await send(room.pk, w.owner_device.device, phone, old)
    foreign = await send(theirs.pk, tenant_b.owner_device.device)
    unknown = await send(uuid.uuid4(), tenant_b.owner_device.device)

    assert missing["type"] == "error" and missing["code"] == "device_mismatch"
    assert missing["fields"] == {"missing": [str(phone.pk)], "extra": []}
    assert missing["client_message_id"] == "c"
    assert stale["code"] == "stale_devices" and stale["fields"] == {
        "stale": [str(old.pk)]
    }
    assert foreign["code"] == unknown["code"] == "not_found"
    assert {k: v for k, v in foreign.items()} == unknown
    assert await _deliveries(tenant_b, tenant_b.owner_device.device) == []
    await agent.disconnect()


# --- Closing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", 4400),
        ("[1, 2]", 4400),
        ('{"type": "_private"}', 4400),
        ('{"type": "ack", "up_to_seq": -1}', 4400),
        ('{"type": "ack", "up_to_seq": "3"}', 4400),
        ("[" * 50_000 + "]" * 50_000, 4400),
        ('{"type": "ack", "up_to_seq": ' + "[" * 50_000 + "]" * 50_000 + "}", 4400),
    ],
    ids=["not-json", "list", "private", "negative", "string", "deep", "deep-field"],
)
async def test_malformed_frames_close_with_4400(
    tenant_a: TenantWorld, frame: str, code: int
) -> None:
    comm, _ = await open_socket(tenant_a.agent_device.device)
    await comm.send_to(text_data=frame)

    assert await close_code(comm) == code


async def test_binary_frames_close_with_4400(tenant_a: TenantWorld) -> None:
    comm, _ = await open_socket(tenant_a.agent_device.device)
    await comm.send_to(bytes_data=b"\x00")

    assert await close_code(comm) == 4400


async def test_a_frame_over_the_request_limit_closes_with_4413(
    tenant_a: TenantWorld,
) -> None:
    comm, _ = await open_socket(tenant_a.agent_device.device)
    await comm.send_to(
        text_data='{"type": "ping", "pad": "' + "x" * (256 * 1024) + '"}'
    )

    assert await close_code(comm) == 4413


async def test_a_frame_flood_closes_with_4429(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = {"FRAME_RATE": 1.0, "FRAME_BURST": 3}
    comm, _ = await open_socket(tenant_a.agent_device.device)
    for _ in range(5):
        await send_json(comm, type="ping")

    assert await close_code(comm) == 4429


async def test_a_newer_socket_of_the_device_replaces_the_older_with_4409(
    tenant_a: TenantWorld,
) -> None:
    first, _ = await open_socket(tenant_a.agent_device.device)
    second, _ = await open_socket(tenant_a.agent_device.device)

    assert await close_code(first) == 4409
    await send_json(second, type="ping")
    frames = await frames_until(second, "pong")
    assert frames[-1]["type"] == "pong"
    await second.disconnect()


async def test_revocation_closes_the_socket_purges_and_tells_peers(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    agent_device = w.agent_device.device
    room = await _room(w.owner, w.agent)
    await _store(w, room, w.owner_device.device, [agent_device], n=3)
    agent, _ = await open_socket(agent_device)
    owner, _ = await open_socket(w.owner_device.device)
    await frames_until(owner, "queue_empty")

    started = time.monotonic()
    await _revoke(w, agent_device)

    assert await close_code(agent) == 4403
    assert time.monotonic() - started < 1.0
    notice = await owner.receive_json_from(timeout=5)
    assert notice == {"type": "devices_changed", "room_id": str(room.pk)}
    assert await _deliveries(w, agent_device) == []
    await owner.disconnect()


async def test_a_revocation_missed_by_the_channel_layer_is_found_on_the_next_frame(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    device = w.agent_device.device
    comm, _ = await open_socket(device)

    @db
    def revoke_silently() -> None:
        with tenant_scope(w.tenant.pk):
            Device.objects.filter(pk=device.pk).update(status=Device.Status.REVOKED)

    await revoke_silently()
    await send_json(comm, type="ping")

    assert await close_code(comm) == 4403


async def test_a_frame_of_another_tenant_room_reveals_nothing(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    """A device of tenant B acks and pings in its own scope only."""
    theirs = await _room(tenant_b.owner, tenant_b.agent)
    await _store(
        tenant_b,
        theirs,
        tenant_b.owner_device.device,
        [tenant_b.agent_device.device],
        n=2,
    )
    comm, hello = await open_socket(tenant_a.agent_device.device)
    frames = await frames_until(comm, "queue_empty")
    await send_json(comm, type="ack", up_to_seq=2)
    await send_json(comm, type="ping")
    await frames_until(comm, "pong")

    assert frames == [{"type": "queue_empty"}]
    assert await _deliveries(tenant_b, tenant_b.agent_device.device) == [1, 2]
    await comm.disconnect()


async def test_peers_hear_devices_changed_on_approval_and_membership_changes(
    tenant_a: TenantWorld,
) -> None:
    from enrollment.actions import do_approve_device
    from messaging.actions import do_add_room_member

    w = tenant_a
    room = await _room(w.owner, w.agent)
    owner, _ = await open_socket(w.owner_device.device)
    await frames_until(owner, "queue_empty")

    @db
    def approve_new_agent_device() -> None:
        with tenant_scope(w.tenant.pk):
            pending = make_device(w.agent, name="new", status=Device.Status.PENDING)
        do_approve_device(pending.device, acting=w.admin)

    @db
    def add_member() -> None:
        with tenant_scope(w.tenant.pk):
            do_add_room_member(room, w.member, acting=w.admin)

    await approve_new_agent_device()
    approved = await owner.receive_json_from(timeout=5)
    await add_member()
    added = await owner.receive_json_from(timeout=5)

    expected = {"type": "devices_changed", "room_id": str(room.pk)}
    assert approved == expected
    assert added == expected
    await owner.disconnect()


async def test_a_send_the_database_fails_closes_the_socket_with_4503(
    tenant_a: TenantWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    owner, _ = await open_socket(w.owner_device.device)
    await frames_until(owner, "queue_empty")

    async def failing(sql: str, params: Any) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(store, "_fetchall", failing)
    await send_json(
        owner,
        type="send",
        room_id=str(room.pk),
        client_message_id="m1",
        envelopes=[envelope(w.agent_device.device)],
    )

    assert await close_code(owner) == 4503
    assert await _deliveries(w, w.agent_device.device) == []
    await owner.disconnect()
