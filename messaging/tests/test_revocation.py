"""Revocation through enrollment: queued envelopes purged, sends refused."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from enrollment.actions import do_revoke_device
from messaging import ratelimit
from messaging.actions import do_send_message
from messaging.models import Delivery, DeviceQueue
from messaging.store import Envelope
from messaging.tests.helpers import as_device, make_room, post_message, send_body
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    ratelimit.reset()


def test_fifty_queued_envelopes_are_purged_and_later_sends_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    agent = w.agent_device.device
    room = make_room(w.owner, w.agent, w.member)
    with tenant_scope(w.tenant.pk):
        for n in range(50):
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=w.owner_device.device,
                client_message_id=str(n),
                envelopes=[
                    Envelope(agent.pk, b"x"),
                    Envelope(w.member_device.device.pk, b"y"),
                ],
            )
        assert Delivery.objects.filter(device=agent).count() == 50

    do_revoke_device(agent, acting=w.admin)

    with tenant_scope(w.tenant.pk):
        assert Delivery.objects.filter(device=agent).count() == 0
        assert DeviceQueue.objects.get(device=agent).depth == 0
        # Other devices' queues are untouched.
        assert Delivery.objects.filter(device=w.member_device.device).count() == 50
    as_device(api, w.owner_device.device)
    refused = post_message(api, room, send_body(agent, w.member_device.device))
    without = post_message(api, room, send_body(w.member_device.device))
    assert refused.status_code == 410
    assert refused.json()["fields"] == {"stale": [str(agent.pk)]}
    assert without.status_code == 201


def test_a_revoked_device_can_no_longer_read_its_inbox(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    agent = w.agent_device.device
    as_device(api, agent)
    assert api.get("/api/v1/devices/me/inbox").status_code == 200

    do_revoke_device(agent, acting=w.admin)

    response = api.get("/api/v1/devices/me/inbox")
    assert response.status_code == 401
    assert response.json()["code"] == "device_revoked"


def test_a_rolled_back_revocation_purges_nothing(tenant_a: TenantWorld) -> None:
    from django.db import transaction

    from enrollment.signals import device_revoked

    w = tenant_a
    agent = w.agent_device.device
    room = make_room(w.owner, w.agent)
    with tenant_scope(w.tenant.pk):
        do_send_message(
            room.pk,
            tenant_id=w.tenant.pk,
            sender=w.owner_device.device,
            client_message_id=uuid.uuid4().hex,
            envelopes=[Envelope(agent.pk, b"x")],
        )

    with pytest.raises(RuntimeError), tenant_scope(w.tenant.pk), transaction.atomic():
        device_revoked.send(sender=type(agent), device=agent)
        raise RuntimeError("revocation failed later")

    with tenant_scope(w.tenant.pk):
        assert Delivery.objects.filter(device=agent).count() == 1
