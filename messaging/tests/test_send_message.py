"""POST /api/v1/rooms/{id}/messages: fan-out rules, idempotency, limits."""

from __future__ import annotations

import base64
import uuid

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from enrollment.models import Device
from messaging import ratelimit
from messaging.actions import do_send_message
from messaging.errors import RecipientQueueFullError
from messaging.models import Delivery, DeviceQueue, Message
from messaging.store import Envelope
from messaging.tests.helpers import (
    as_device,
    envelope,
    make_room,
    post_message,
    send_body,
)
from tenants.scope import tenant_scope
from tests.support import TenantWorld, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    ratelimit.reset()


def _counts(world: TenantWorld) -> tuple[int, int]:
    with tenant_scope(world.tenant.pk):
        return Message.objects.count(), Delivery.objects.count()


def test_it_stores_one_delivery_per_recipient_device(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    with tenant_scope(w.tenant.pk):
        owner_phone = make_device(w.owner, name="phone").device
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    body = send_body(w.agent_device.device, owner_phone)
    response = post_message(api, room, body)

    assert response.status_code == 201, response.json()
    with tenant_scope(w.tenant.pk):
        rows = list(
            Delivery.objects.order_by("device_id").values_list("device_id", "seq")
        )
        assert sorted(rows) == sorted(
            [(w.agent_device.device.pk, 1), (owner_phone.pk, 1)]
        )
        message = Message.objects.get()
        assert str(message.pk) == response.json()["message_id"]
        assert message.sender_device_id == w.owner_device.device.pk
        sent = {e["device_id"]: e["ciphertext"] for e in body["envelopes"]}
        stored = Delivery.objects.get(device=w.agent_device.device)
        assert (
            base64.b64encode(bytes(stored.ciphertext)).decode()
            == sent[str(w.agent_device.device.pk)]
        )


def test_sequence_numbers_are_per_device_and_gap_free(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent, w.member)
    as_device(api, w.owner_device.device)
    for _ in range(3):
        body = send_body(w.agent_device.device, w.member_device.device)
        assert post_message(api, room, body).status_code == 201
    as_device(api, w.agent_device.device)
    body = send_body(w.owner_device.device, w.member_device.device)
    assert post_message(api, room, body).status_code == 201

    with tenant_scope(w.tenant.pk):
        seqs = list(
            Delivery.objects.filter(device=w.member_device.device)
            .order_by("seq")
            .values_list("seq", flat=True)
        )
        assert seqs == [1, 2, 3, 4]
        queue = DeviceQueue.objects.get(device=w.member_device.device)
        assert (queue.last_seq, queue.depth) == (4, 4)


def test_a_send_missing_one_of_two_owner_devices_names_it(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    with tenant_scope(w.tenant.pk):
        phone = make_device(w.owner, name="phone").device
    room = make_room(w.owner, w.agent)
    as_device(api, w.agent_device.device)

    response = post_message(api, room, send_body(w.owner_device.device))

    assert response.status_code == 409
    assert response.json()["code"] == "device_mismatch"
    assert response.json()["fields"] == {"missing": [str(phone.pk)], "extra": []}
    assert _counts(w) == (0, 0)


def test_the_sender_covers_its_own_other_devices_but_not_itself(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    with tenant_scope(w.tenant.pk):
        phone = make_device(w.owner, name="phone").device
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    response = post_message(
        api, room, send_body(w.agent_device.device, phone, w.owner_device.device)
    )

    assert response.status_code == 409
    assert response.json()["fields"] == {
        "missing": [],
        "extra": [str(w.owner_device.device.pk)],
    }


def test_a_send_to_a_revoked_device_is_refused_as_stale(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    with tenant_scope(w.tenant.pk):
        old = make_device(w.agent, name="old", status=Device.Status.REVOKED).device
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    response = post_message(api, room, send_body(w.agent_device.device, old))

    assert response.status_code == 410
    assert response.json()["code"] == "stale_devices"
    assert response.json()["fields"] == {"stale": [str(old.pk)]}
    assert _counts(w) == (0, 0)


def test_pending_devices_are_not_recipients(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    with tenant_scope(w.tenant.pk):
        pending = make_device(w.agent, name="new", status=Device.Status.PENDING).device
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    response = post_message(api, room, send_body(w.agent_device.device, pending))

    assert response.status_code == 409
    assert response.json()["fields"] == {"missing": [], "extra": [str(pending.pk)]}


def test_a_repeated_client_message_id_returns_the_first_result(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    body = send_body(w.agent_device.device, cid="same-id")

    first = post_message(api, room, body)
    again = post_message(api, room, send_body(w.agent_device.device, cid="same-id"))

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert _counts(w) == (1, 1)


def test_the_same_client_id_from_another_device_is_a_new_message(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    first = post_message(api, room, send_body(w.agent_device.device, cid="x1"))
    as_device(api, w.agent_device.device)
    second = post_message(api, room, send_body(w.owner_device.device, cid="x1"))

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["message_id"] != second.json()["message_id"]


def test_a_room_of_another_tenant_answers_like_a_missing_one(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    theirs = make_room(tenant_b.owner, tenant_b.agent)
    as_device(api, tenant_a.owner_device.device)

    foreign = post_message(api, theirs, send_body(tenant_b.agent_device.device))
    missing = post_message(api, uuid.uuid4(), send_body(tenant_b.agent_device.device))

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    assert foreign.json()["code"] == "not_found"
    assert _counts(tenant_b) == (0, 0)


def test_a_device_of_another_tenant_is_extra_like_an_unknown_one(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    foreign = tenant_b.agent_device.device.pk
    unknown = uuid.uuid4()

    r1 = post_message(api, room, send_body(w.agent_device.device, foreign))
    r2 = post_message(api, room, send_body(w.agent_device.device, unknown))

    assert r1.status_code == r2.status_code == 409
    assert r1.json()["fields"] == {"missing": [], "extra": [str(foreign)]}
    assert r2.json()["fields"] == {"missing": [], "extra": [str(unknown)]}


def test_members_of_the_tenant_outside_the_room_cannot_send(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)

    for device in (w.member_device.device, w.admin_device.device):
        as_device(api, device)
        response = post_message(
            api, room, send_body(w.owner_device.device, w.agent_device.device)
        )
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert _counts(w) == (0, 0)


def test_an_agent_cannot_send_to_a_room_it_is_not_assigned_to(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    make_room(w.owner, w.agent)
    other = make_room(w.owner, w.member)
    as_device(api, w.agent_device.device)

    response = post_message(
        api, other, send_body(w.owner_device.device, w.member_device.device)
    )

    assert response.status_code == 404


def test_duplicate_envelopes_for_one_device_are_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    body = send_body(w.agent_device.device, w.agent_device.device)
    response = post_message(api, room, body)

    assert response.status_code == 400
    assert response.json()["code"] == "duplicate_device"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"envelopes": []}, "client_message_id"),
        ({"client_message_id": "", "envelopes": []}, "client_message_id"),
        ({"client_message_id": "x" * 65, "envelopes": []}, "client_message_id"),
        ({"client_message_id": "a", "envelopes": {}}, "envelopes"),
        (
            {"client_message_id": "a", "envelopes": [{"device_id": "nope"}]},
            "envelopes.device_id",
        ),
        (
            {
                "client_message_id": "a",
                "envelopes": [{"device_id": str(uuid.uuid4()), "ciphertext": "!!"}],
            },
            "envelopes.ciphertext",
        ),
    ],
)
def test_malformed_sends_are_refused(
    api: APIClient, tenant_a: TenantWorld, body: dict[str, object], field: str
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    response = post_message(api, room, body)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert list(response.json()["fields"]) == [field]


@pytest.mark.parametrize(
    "body", ["{not json", "[" * 50_000 + "]" * 50_000], ids=["bad", "deep"]
)
def test_unparsable_sends_are_malformed_requests(
    api: APIClient, tenant_a: TenantWorld, body: str
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)

    response = api.post(
        f"/api/v1/rooms/{room.pk}/messages", body, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"


def test_a_ciphertext_over_96_kib_is_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    ok = {
        "client_message_id": "ok",
        "envelopes": [envelope(w.agent_device.device, 96 * 1024)],
    }
    big = {
        "client_message_id": "big",
        "envelopes": [envelope(w.agent_device.device, 96 * 1024 + 1)],
    }

    assert post_message(api, room, ok).status_code == 201
    response = post_message(api, room, big)

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert _counts(w) == (1, 1)


def test_a_request_over_256_kib_is_refused(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    devices = [w.agent_device.device]
    with tenant_scope(w.tenant.pk):
        devices += [make_device(w.agent, name=f"d{i}").device for i in range(2)]
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    body = {
        "client_message_id": "big",
        "envelopes": [envelope(d, 90 * 1024) for d in devices],
    }

    response = post_message(api, room, body)

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert _counts(w) == (0, 0)


@override_settings(MESSAGING={"QUEUE_CAP": 2})
def test_a_full_recipient_queue_refuses_the_send_and_stores_nothing(
    tenant_a: TenantWorld,
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    sender = w.owner_device.device
    target = [Envelope(w.agent_device.device.pk, b"x")]
    with tenant_scope(w.tenant.pk):
        for cid in ("1", "2"):
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=sender,
                client_message_id=cid,
                envelopes=target,
            )
        with pytest.raises(RecipientQueueFullError) as refused:
            do_send_message(
                room.pk,
                tenant_id=w.tenant.pk,
                sender=sender,
                client_message_id="3",
                envelopes=target,
            )
        assert refused.value.fields == {"devices": [str(w.agent_device.device.pk)]}
        assert Message.objects.count() == Delivery.objects.count() == 2
        assert DeviceQueue.objects.get(device=w.agent_device.device).last_seq == 2


@override_settings(MESSAGING={"QUEUE_CAP": 3})
def test_a_full_recipient_queue_answers_507_and_stores_nothing(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent, w.member)
    as_device(api, w.owner_device.device)
    for _ in range(3):
        body = send_body(w.agent_device.device, w.member_device.device)
        assert post_message(api, room, body).status_code == 201
    as_device(api, w.member_device.device)
    ack = api.post("/api/v1/devices/me/inbox/ack", {"up_to_seq": 3}, format="json")
    assert ack.status_code == 200, ack.content
    as_device(api, w.owner_device.device)

    response = post_message(
        api, room, send_body(w.agent_device.device, w.member_device.device)
    )

    assert response.status_code == 507
    assert response.json()["code"] == "recipient_queue_full"
    assert response.json()["fields"] == {"devices": [str(w.agent_device.device.pk)]}
    assert _counts(w) == (3, 3)
    with tenant_scope(w.tenant.pk):
        assert DeviceQueue.objects.get(device=w.member_device.device).last_seq == 3


@override_settings(MESSAGING={"SEND_RATE": 1.0, "SEND_BURST": 3})
def test_sends_over_the_device_rate_get_429_with_retry_after(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    statuses = [
        post_message(api, room, send_body(w.agent_device.device)).status_code
        for _ in range(3)
    ]
    refused = post_message(api, room, send_body(w.agent_device.device))

    assert statuses == [201, 201, 201]
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused["Retry-After"]) >= 1
    # Another device has its own bucket.
    as_device(api, w.agent_device.device)
    assert post_message(api, room, send_body(w.owner_device.device)).status_code == 201


def test_a_repeat_answers_the_first_result_even_after_the_devices_changed(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    w = tenant_a
    room = make_room(w.owner, w.agent)
    as_device(api, w.owner_device.device)
    first = post_message(api, room, send_body(w.agent_device.device, cid="once"))
    with tenant_scope(w.tenant.pk):
        make_device(w.agent, name="second")

    again = post_message(api, room, send_body(w.agent_device.device, cid="once"))

    assert first.status_code == 201
    assert (again.status_code, again.json()) == (200, first.json())
    assert _counts(w) == (1, 1)
