"""Revocations that race a send or a socket's opening, on real connections.

A send that waits on a device-row lock while its sender is revoked is
either stored before the revocation commits (which then purges it) or
refused; a socket whose device is revoked while it opens is closed with
4403 without having to send a frame first.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
import pytest

from enrollment.actions import do_revoke_device
from enrollment.models import Device
from messaging import store
from messaging.models import Message
from messaging.store import Envelope
from messaging.tests.helpers import make_room
from messaging.tests.relay_client import close_code, db, open_socket
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("relay_pool_closed"),
]


@db
def _room(*members: Any) -> Any:
    return make_room(*members)


@db
def _revoke(world: TenantWorld, device_id: Any) -> None:
    with tenant_scope(world.tenant.pk):
        device = Device.objects.get(pk=device_id)
    do_revoke_device(device, acting=None)


@db
def _messages_of(world: TenantWorld, device_id: Any) -> list[str]:
    with tenant_scope(world.tenant.pk):
        return list(
            Message.objects.filter(sender_device_id=device_id).values_list(
                "client_message_id", flat=True
            )
        )


def _hold_device_row(world: TenantWorld, device_id: Any) -> psycopg.Connection[Any]:
    """Open a transaction holding a device row, as a concurrent send would."""
    params = store._connect_kwargs()
    params.update(autocommit=False, prepare_threshold=None)
    holder = psycopg.connect(**params)
    holder.execute(
        "SELECT set_config('app.current_tenant_id', %s, true)", [str(world.tenant.pk)]
    )
    holder.execute(
        "SELECT 1 FROM enrollment_device WHERE id = %s FOR NO KEY UPDATE", [device_id]
    )
    return holder


async def test_a_send_racing_its_senders_revocation_is_stored_first_or_refused(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    room = await _room(w.owner, w.agent)
    sender, agent = w.owner_device.device, w.agent_device.device.pk
    holder = await asyncio.to_thread(_hold_device_row, w, agent)
    params = store.send_params(
        tenant_id=w.tenant.pk,
        device_id=sender.pk,
        member_id=sender.member_id,
        epoch=None,
        room_id=room.pk,
        client_message_id="race",
        envelopes=[Envelope(agent, os.urandom(64))],
        queue_cap=100,
    )
    try:
        # The single-statement path (REST, and a batch's retry).
        send = asyncio.ensure_future(store._fetchone(store.SEND_SQL, params))
        await asyncio.sleep(0.3)
        assert not send.done(), "the send should wait on the held row"
        revoke = asyncio.ensure_future(_revoke(w, sender.pk))
        await asyncio.sleep(0.5)
        revoked_while_send_waited = revoke.done()
    finally:
        await asyncio.to_thread(holder.commit)
        holder.close()
    outcome = (await send)[0]
    await revoke

    if revoked_while_send_waited:
        # The revocation committed first: the send must not store anything.
        assert outcome == "device_revoked"
        assert await _messages_of(w, sender.pk) == []
    else:
        # The send held the sender's row: the revocation waited for it.
        assert outcome == "stored"


async def test_a_socket_revoked_while_it_opens_is_closed_without_a_frame(
    tenant_a: TenantWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = tenant_a
    other, _ = await open_socket(w.agent_device.device)  # the hub is listening
    target = w.owner_device.device
    opened = store.aopen

    async def open_then_revoke(*args: Any) -> Any:
        row = await opened(*args)
        if args[1] == target.pk:
            await _revoke(w, target.pk)  # commits after the open
            await asyncio.sleep(0.3)  # its relay.revoke reaches the hub first
        return row

    monkeypatch.setattr(store, "aopen", open_then_revoke)
    comm, _ = await open_socket(target)

    assert await close_code(comm, timeout=3) == 4403
    await comm.disconnect()
    await other.disconnect()


def _enter_in_one_transaction(*tenants: Any) -> None:
    params = store._connect_kwargs()
    params.update(autocommit=False, prepare_threshold=None)
    with psycopg.connect(**params) as conn:
        for tenant in tenants:
            conn.execute("SELECT messaging_enter_tenant(%s)", [tenant])


@pytest.mark.parametrize("second", ["other tenant", "no tenant"])
async def test_a_relay_statement_cannot_leave_or_switch_its_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld, second: str
) -> None:
    # NULL would reset the setting, and the next entry could then switch.
    steps = [tenant_a.tenant.pk, None if second == "no tenant" else tenant_b.tenant.pk]
    if second == "no tenant":
        steps.append(tenant_b.tenant.pk)

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await asyncio.to_thread(_enter_in_one_transaction, *steps)
