"""One worker on the in-memory channel layer (the embedded default, no Redis).

There, an event published by another process cannot reach the worker: a
``manage.py revoke_device`` run beside ``make serve`` tells no socket. The
worker's status survey is then the only path, and it must still close the
revoked device's socket within a second.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from messaging.tests import cluster
from messaging.tests.net_client import close_code, open_relay, recv_json
from messaging.tests.relay_client import db
from tests.support import TenantWorld

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(django_db_setup: None, django_db_blocker: Any) -> Iterator[cluster.Worker]:
    """One worker with no Redis and the relay's default intervals."""
    log_dir = Path(tempfile.mkdtemp(prefix="av-relay-memory-"))
    env = cluster.worker_environment("", WEB_CONCURRENCY="1")
    with django_db_blocker.unblock():
        running = cluster.Worker(env, log_dir, 1)
        try:
            running.wait_ready()
            yield running
        finally:
            running.stop()
            shutil.rmtree(log_dir, ignore_errors=True)


@db
def _revoke_from_a_command(world: TenantWorld) -> None:
    # This process's in-memory layer is not the worker's: the event is lost.
    call_command(
        "revoke_device",
        tenant=world.tenant.slug,
        device=str(world.agent_device.device.pk),
    )


async def test_a_command_s_revocation_closes_the_socket_within_a_second(
    worker: cluster.Worker, tenant_a: TenantWorld
) -> None:
    agent, _ = await open_relay(worker.ws, tenant_a.agent_device.device)
    assert (await recv_json(agent))["type"] == "queue_empty"

    started = time.monotonic()
    await _revoke_from_a_command(tenant_a)
    code = await close_code(agent, timeout=20)
    closed_after = time.monotonic() - started

    assert code == 4403, worker.log()[-4000:]
    # The survey runs every 0.5 s here; at the 15 s meant for Redis set-ups
    # this waited up to 15 s.
    assert closed_after < 1.5
