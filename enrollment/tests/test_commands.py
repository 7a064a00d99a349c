"""manage.py create_invite, approve_device, revoke_device and list_devices."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from enrollment.tests.helpers import audit_actions, device, enroll
from tests.support import TenantWorld

pytestmark = pytest.mark.django_db


def _run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_an_operator_invites_enrolls_approves_lists_and_revokes(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    slug = tenant_a.tenant.slug
    token, note = _run(
        "create_invite", "--tenant", slug, "--name", "Bot", "--kind", "agent"
    )
    token = token.strip()
    assert token.startswith(f"av1.{tenant_a.tenant.pk}.")
    assert token not in note

    enrolled = enroll(api, token)
    assert enrolled.status_code == 201
    device_id = enrolled.json()["device_id"]
    fingerprint = enrolled.json()["fingerprint"]

    with pytest.raises(CommandError, match="fingerprint differs"):
        _run(
            "approve_device",
            "--tenant",
            slug,
            "--device",
            device_id,
            "--fingerprint",
            "00000 " * 7 + "00000",
        )
    assert device(tenant_a, device_id).status == "pending"

    # Typed without the spaces between its groups, it is the same fingerprint.
    out, _ = _run(
        "approve_device",
        "--tenant",
        slug,
        "--device",
        device_id,
        "--fingerprint",
        fingerprint.replace(" ", ""),
    )
    assert "is active" in out and fingerprint in out

    listed, _ = _run("list_devices", "--tenant", slug, "--status", "active")
    assert device_id in listed and fingerprint in listed
    member_id = device(tenant_a, device_id).member_id
    assert f"(member {member_id})" in listed

    out, _ = _run("revoke_device", "--tenant", slug, "--device", device_id)
    assert "is revoked" in out
    assert device(tenant_a, device_id).status == "revoked"
    assert audit_actions(tenant_a) == [
        "invite.created",
        "device.enrolled",
        "device.approved",
        "device.revoked",
    ]


def test_commands_stay_inside_the_named_tenant(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    foreign = str(tenant_b.member_device.device.pk)
    with pytest.raises(CommandError, match="No device"):
        _run("revoke_device", "--tenant", tenant_a.tenant.slug, "--device", foreign)
    with pytest.raises(CommandError, match="No active member"):
        _run(
            "create_invite",
            "--tenant",
            tenant_a.tenant.slug,
            "--member",
            str(tenant_b.member.pk),
        )
    assert device(tenant_b, foreign).status == "active"

    listed, _ = _run("list_devices", "--tenant", tenant_a.tenant.slug)
    assert foreign not in listed


@pytest.mark.parametrize(
    "args, message",
    [
        (["create_invite", "--tenant", "nope", "--name", "x"], "No tenant"),
        (["create_invite", "--tenant", "alpha"], "--name"),
        (
            ["create_invite", "--tenant", "alpha", "--name", "x", "--hours", "200"],
            "hours",
        ),
        (
            ["approve_device", "--tenant", "alpha", "--device", "x"]
            + ["--fingerprint", "0"],
            "not a device id",
        ),
        (
            ["approve_device", "--tenant", "alpha", "--device", str(uuid.uuid4())]
            + ["--fingerprint", "0"],
            "No device",
        ),
        (
            ["approve_device", "--tenant", "alpha", "--device", str(uuid.uuid4())],
            "--fingerprint",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(
    tenant_a: TenantWorld, args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        _run(*args)
