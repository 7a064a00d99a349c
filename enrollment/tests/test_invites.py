"""POST/GET /api/v1/invites and POST /api/v1/invites/{id}/revoke."""

from __future__ import annotations

import datetime
import hashlib
import uuid

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from enrollment.models import Invite
from enrollment.tests.helpers import as_admin, audit_actions, create_invite
from tenants.scope import tenant_scope
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _invite(world: TenantWorld, invite_id: str) -> Invite:
    with tenant_scope(world.tenant.pk):
        return Invite.objects.get(pk=invite_id)


def test_an_admin_creates_an_invite_whose_token_shows_once(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    body = create_invite(api, tenant_a, name="Scout", kind="agent")

    prefix, tenant, secret = body["token"].split(".")
    assert (prefix, tenant) == ("av1", str(tenant_a.tenant.pk))
    assert len(secret) == 43
    assert body["status"] == "open"
    assert (body["member_kind"], body["member_role"]) == ("agent", "agent")

    # Only the keyed BLAKE2b-256 of (tenant id, secret) is stored.
    invite = _invite(tenant_a, body["id"])
    expected = hashlib.blake2b(
        tenant_a.tenant.pk.bytes + secret.encode(),
        digest_size=32,
        key=settings.AGENTVAULT["INVITE_PEPPER"].encode(),
        person=b"av-invite-v1",
    ).hexdigest()
    assert invite.secret_hash == expected
    assert invite.lookup == expected[:16]
    stored = " ".join(str(getattr(invite, f.attname)) for f in Invite._meta.fields)
    assert secret not in stored

    as_admin(api, tenant_a)
    listed = api.get("/api/v1/invites").json()
    assert [item["id"] for item in listed] == [body["id"]]
    assert "token" not in listed[0]
    assert audit_actions(tenant_a) == ["invite.created"]


def test_an_invite_lives_24_hours_by_default_and_7_days_at_most(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    before = timezone.now()
    body = create_invite(api, tenant_a, name="Ann")
    expires = datetime.datetime.fromisoformat(body["expires_at"])
    assert before + datetime.timedelta(hours=24) <= expires
    assert expires <= timezone.now() + datetime.timedelta(hours=24)

    week = create_invite(api, tenant_a, name="Bo", expires_in=7 * 24 * 3600)
    assert week["status"] == "open"

    as_admin(api, tenant_a)
    response = api.post(
        "/api/v1/invites",
        {"name": "Cy", "expires_in": 7 * 24 * 3600 + 1},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_lifetime"


def test_an_invite_for_another_device_of_an_existing_member(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    body = create_invite(api, tenant_a, member_id=str(tenant_a.member.pk))
    assert body["member_id"] == str(tenant_a.member.pk)
    assert body["member_name"] == ""


def test_a_member_of_another_tenant_cannot_be_invited(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    as_admin(api, tenant_a)
    response = api.post(
        "/api/v1/invites", {"member_id": str(tenant_b.member.pk)}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("who", ["member", "agent"])
def test_members_and_agents_cannot_create_or_list_invites(
    api: APIClient, tenant_a: TenantWorld, who: str
) -> None:
    as_admin(api, tenant_a, who=who)
    created = api.post("/api/v1/invites", {"name": "X"}, format="json")
    listed = api.get("/api/v1/invites")
    assert (created.status_code, created.json()["code"]) == (403, "forbidden")
    assert (listed.status_code, listed.json()["code"]) == (403, "forbidden")
    with tenant_scope(tenant_a.tenant.pk):
        assert Invite.objects.count() == 0


def test_only_an_owner_admin_invites_a_new_admin(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    as_admin(api, tenant_a, who="admin")
    refused = api.post(
        "/api/v1/invites", {"name": "Boss", "role": "tenant_admin"}, format="json"
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")

    as_admin(api, tenant_a, who="owner")
    allowed = api.post(
        "/api/v1/invites", {"name": "Boss", "role": "tenant_admin"}, format="json"
    )
    assert allowed.status_code == 201
    assert allowed.json()["member_role"] == "tenant_admin"


def test_an_agent_invite_needs_the_agent_role(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    as_admin(api, tenant_a)
    response = api.post(
        "/api/v1/invites",
        {"name": "Bot", "kind": "agent", "role": "member"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_an_admin_revokes_an_invite_once(api: APIClient, tenant_a: TenantWorld) -> None:
    body = create_invite(api, tenant_a)
    as_admin(api, tenant_a)

    first = api.post(f"/api/v1/invites/{body['id']}/revoke")
    again = api.post(f"/api/v1/invites/{body['id']}/revoke")

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "revoked"
    assert audit_actions(tenant_a) == ["invite.created", "invite.revoked"]


def test_another_tenants_invite_answers_like_a_missing_one(
    api: APIClient, tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    body = create_invite(api, tenant_b)
    as_admin(api, tenant_a)

    foreign = api.post(f"/api/v1/invites/{body['id']}/revoke")
    missing = api.post(f"/api/v1/invites/{uuid.uuid4()}/revoke")

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    assert _invite(tenant_b, body["id"]).revoked_at is None
