"""Relay sends of one event-loop turn are stored in one statement per tenant.

Each send is still judged on its own: refusals, repeats and stored sends in
the same batch get their own answers, and sequence numbers stay gap-free.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest

from messaging import store
from messaging.errors import DeviceMismatchError, DuplicateDeviceError
from messaging.models import Delivery
from messaging.store import Envelope
from messaging.tests.helpers import make_room
from messaging.tests.relay_client import db
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("relay_pool_closed"),
]


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every statement the relay pool runs."""
    seen: list[str] = []
    fetchone, fetchall = store._fetchone, store._fetchall

    async def one(sql: str, params: Any) -> Any:
        seen.append(sql)
        return await fetchone(sql, params)

    async def many(sql: str, params: Any) -> Any:
        seen.append(sql)
        return await fetchall(sql, params)

    monkeypatch.setattr(store, "_fetchone", one)
    monkeypatch.setattr(store, "_fetchall", many)
    return seen


@db
def _room(*members: Any) -> Any:
    return make_room(*members)


@db
def _seqs(world: TenantWorld, device_id: uuid.UUID) -> list[int]:
    with tenant_scope(world.tenant.pk):
        return sorted(
            Delivery.objects.filter(device_id=device_id).values_list("seq", flat=True)
        )


def _send(world: TenantWorld, room: Any, cid: str, *to: uuid.UUID) -> Any:
    sender = world.owner_device.device
    return store.asend(
        tenant_id=world.tenant.pk,
        device_id=sender.pk,
        member_id=sender.member_id,
        epoch=None,
        room_id=room.pk,
        client_message_id=cid,
        envelopes=[Envelope(device, os.urandom(64)) for device in to],
        queue_cap=100,
    )


async def test_sends_of_one_turn_share_one_statement_and_keep_their_answers(
    tenant_a: TenantWorld, statements: list[str]
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    agent = w.agent_device.device.pk
    first = await _send(w, room, "first", agent)
    statements.clear()

    results = await asyncio.gather(
        _send(w, room, "a", agent),
        _send(w, room, "b", agent),
        _send(w, room, "first", agent),  # a repeat
        _send(w, room, "wrong", w.member_device.device.pk),  # not in the room
        _send(w, room, "c", agent),
        return_exceptions=True,
    )

    assert [sql.split("(")[0] for sql in statements] == [
        "SELECT * FROM messaging_send_batch"
    ]
    a, b, repeat, wrong, c = results
    stored = (a, b, c)
    assert [r[0].created for r in stored] == [True] * 3  # type: ignore[index]
    assert [r[1][0].seq for r in (a, b, c)] == [2, 3, 4]  # type: ignore[index]
    assert repeat[0].message_id == first[0].message_id  # type: ignore[index]
    assert repeat[0].created is False  # type: ignore[index]
    assert isinstance(wrong, DeviceMismatchError)
    assert wrong.fields == {
        "missing": [str(agent)],
        "extra": [str(w.member_device.device.pk)],
    }
    assert await _seqs(w, agent) == [1, 2, 3, 4]


async def test_a_send_naming_a_device_twice_is_refused_before_the_batch(
    tenant_a: TenantWorld, statements: list[str]
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    agent = w.agent_device.device.pk

    with pytest.raises(DuplicateDeviceError):
        await _send(w, room, "twice", agent, agent)

    assert statements == []
    assert await _seqs(w, agent) == []


async def test_sends_of_two_tenants_go_in_one_statement_each(
    tenant_a: TenantWorld, tenant_b: TenantWorld, statements: list[str]
) -> None:
    room_a = await _room(tenant_a.owner, tenant_a.agent)
    room_b = await _room(tenant_b.owner, tenant_b.agent)

    await asyncio.gather(
        _send(tenant_a, room_a, "a1", tenant_a.agent_device.device.pk),
        _send(tenant_b, room_b, "b1", tenant_b.agent_device.device.pk),
        _send(tenant_a, room_a, "a2", tenant_a.agent_device.device.pk),
    )

    assert len(statements) == 2
    assert await _seqs(tenant_a, tenant_a.agent_device.device.pk) == [1, 2]
    assert await _seqs(tenant_b, tenant_b.agent_device.device.pk) == [1]


async def test_batches_that_cross_the_same_recipients_do_not_deadlock(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    to_agent = await _room(w.owner, w.agent)
    to_member = await _room(w.owner, w.member)
    sender = w.owner_device.device
    agent, member = w.agent_device.device.pk, w.member_device.device.pk

    def batch(order: list[tuple[Any, uuid.UUID]]) -> list[Any]:
        return store.send_batch_params(
            [
                store.send_params(
                    tenant_id=w.tenant.pk,
                    device_id=sender.pk,
                    member_id=sender.member_id,
                    epoch=None,
                    room_id=room.pk,
                    client_message_id=uuid.uuid4().hex,
                    envelopes=[Envelope(device, b"x" * 64)],
                    queue_cap=1000,
                )
                for room, device in order
            ]
        )

    # Without the up-front locks in id order, one batch would lock the
    # agent's device then the member's, the other the reverse.
    outcomes: list[str] = []
    for _ in range(10):
        rows = await asyncio.gather(
            store._fetchall(
                store.SEND_BATCH_SQL,
                batch([(to_agent, agent), (to_member, member)]),
            ),
            store._fetchall(
                store.SEND_BATCH_SQL,
                batch([(to_member, member), (to_agent, agent)]),
            ),
        )
        outcomes += [row[1] for result in rows for row in result]

    assert outcomes == ["stored"] * 40
    assert await _seqs(w, agent) == list(range(1, 21))


@pytest.fixture
def held_statements(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], Any]:
    """Hold the relay pool's first send or read statement until released;
    record how many sends or reads each one carried."""
    sizes: list[int] = []
    release = asyncio.Event()
    fetchall = store._fetchall

    async def many(sql: str, params: Any) -> Any:
        sizes.append(len(params[3] if sql == store.SEND_BATCH_SQL else params[1]))
        if len(sizes) == 1:
            await release.wait()
        return await fetchall(sql, params)

    monkeypatch.setattr(store, "_fetchall", many)
    return sizes, release


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_sends_made_while_a_statement_is_out_go_together_in_the_next(
    tenant_a: TenantWorld, held_statements: tuple[list[int], Any]
) -> None:
    w = tenant_a
    sizes, release = held_statements
    room = await _room(w.owner, w.agent)
    agent = w.agent_device.device.pk

    first = asyncio.ensure_future(_send(w, room, "first", agent))
    await _turns(3)
    later = []
    for index in range(3):  # each in a turn of its own
        later.append(asyncio.ensure_future(_send(w, room, f"later-{index}", agent)))
        await _turns(3)
    release.set()
    await asyncio.gather(first, *later)

    assert sizes == [1, 3]
    assert await _seqs(w, agent) == [1, 2, 3, 4]


async def test_reads_asked_for_while_a_read_is_out_go_together_in_the_next(
    tenant_a: TenantWorld, held_statements: tuple[list[int], Any]
) -> None:
    from messaging.hub import relay_hub
    from messaging.sockets import SocketIdentity

    w = tenant_a
    sizes, release = held_statements
    hub = relay_hub()

    def read(device: Any) -> Any:
        identity = SocketIdentity(w.tenant.pk, device.pk, device.member_id, 0, 1, 0)
        return asyncio.ensure_future(hub.read(identity, after=0, limit=8))

    first = read(w.owner_device.device)
    await _turns(3)
    later = []
    for device in (w.agent_device.device, w.member_device.device):
        later.append(read(device))
        await _turns(3)
    release.set()
    answers = await asyncio.gather(first, *later)

    assert sizes == [1, 2]
    assert answers == [[], [], []]
