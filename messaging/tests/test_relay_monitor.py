"""The per-process survey of relay sockets: one query per tenant per interval."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from enrollment.models import Device
from messaging import events, hub, ratelimit, sockets, store
from messaging.actions import do_send_message
from messaging.store import Envelope
from messaging.tests.helpers import make_room
from messaging.tests.relay_client import (
    close_code,
    communicator,
    db,
    frames_until,
    open_socket,
)
from tenants.models import Member
from tenants.scope import tenant_scope
from tests.support import TenantWorld, device_token, make_device

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("relay_pool_closed"),
]

FAST = {"STATUS_INTERVAL": 0.4, "SWEEP_INTERVAL": 0.4}


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    ratelimit.reset()


async def test_a_revocation_behind_the_relays_back_closes_within_the_interval(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = FAST
    device = tenant_a.agent_device.device
    comm, _ = await open_socket(device)
    await frames_until(comm, "queue_empty")

    @db
    def revoke_silently() -> None:
        # A database update with no ``relay.revoke`` event and no frame.
        with tenant_scope(tenant_a.tenant.pk):
            Device.objects.filter(pk=device.pk).update(status=Device.Status.REVOKED)

    await revoke_silently()
    started = time.monotonic()

    assert await close_code(comm, timeout=5) == 4403
    assert time.monotonic() - started < 2 * FAST["STATUS_INTERVAL"] + 1.0


async def test_a_dropped_wakeup_is_caught_by_the_sweep(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = FAST
    w = tenant_a

    @db
    def store_without_wakeup() -> None:
        room = make_room(w.owner, w.agent)
        # The wake-ups are collected and dropped, as an overloaded layer would.
        with events.collect_events(), tenant_scope(w.tenant.pk):
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=w.owner_device.device,
                client_message_id=uuid.uuid4().hex,
                envelopes=[Envelope(w.agent_device.device.pk, b"c" * 16)],
            )

    comm, _ = await open_socket(w.agent_device.device)
    await frames_until(comm, "queue_empty")
    await store_without_wakeup()

    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "envelope"
    assert frame["seq"] == 1
    await comm.disconnect()


async def test_idle_sockets_of_one_tenant_cost_one_status_query_per_interval(
    tenant_a: TenantWorld, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MESSAGING = FAST
    w = tenant_a

    @db
    def devices(n: int) -> list[Device]:
        with tenant_scope(w.tenant.pk):
            return [make_device(w.agent, name=f"d{i}").device for i in range(n)]

    surveys: list[tuple[int, int]] = []
    per_socket: list[str] = []
    survey = sockets.survey_devices

    def counted_survey(
        tenants: dict[uuid.UUID, list[uuid.UUID]],
    ) -> dict[uuid.UUID, sockets.DeviceState]:
        with CaptureQueriesContext(connection) as queries:
            states = survey(tenants)
        surveys.append(
            (
                sum(len(ids) for ids in tenants.values()),
                sum("messaging_devicequeue" in q["sql"] for q in queries),
            )
        )
        return states

    def counted(name: str) -> Any:
        original = getattr(sockets, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            per_socket.append(name)
            return original(*args, **kwargs)

        return wrapper

    def counted_store(name: str) -> Any:
        original = getattr(store, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            per_socket.append(name)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(sockets, "survey_devices", counted_survey)
    monkeypatch.setattr(sockets, "check_socket", counted("check_socket"))

    n = 8
    comms = []
    for device in await devices(n):
        comm, _ = await open_socket(device)
        await frames_until(comm, "queue_empty")
        comms.append(comm)
    monkeypatch.setattr(store, "ainbox", counted_store("ainbox"))
    surveys.clear()
    per_socket.clear()  # each socket checked its device once as it opened

    await asyncio.sleep(5 * FAST["STATUS_INTERVAL"])

    assert len(surveys) >= 3
    # One query on the queue rows per survey, however many sockets it covers.
    assert all(queries == 1 for _, queries in surveys), surveys
    assert surveys[-1] == (n, 1)
    # No socket ran a check or a read of its own while idle.
    assert per_socket == []
    for comm in comms:
        await comm.disconnect()
    await asyncio.sleep(0.1)
    # The last socket out stops the survey.
    assert hub.relay_hub().survey is None
    assert hub.relay_hub().listener is None


async def test_a_deactivated_member_is_refused_and_closed_with_4401(
    tenant_a: TenantWorld, settings: Any
) -> None:
    settings.MESSAGING = FAST
    w = tenant_a
    comm, _ = await open_socket(w.agent_device.device)
    await frames_until(comm, "queue_empty")

    @db
    def deactivate() -> None:
        with tenant_scope(w.tenant.pk):
            Member.objects.filter(pk=w.agent.pk).update(is_active=False)

    await deactivate()
    # The open socket is closed by the survey; a new one is refused.
    assert await close_code(comm, timeout=5) == 4401
    refused = communicator(device_token(w.agent_device.device))
    await refused.connect(timeout=10)
    assert await close_code(refused) == 4401
