"""Builders for test data: tenants with members and devices, and their tokens."""

from __future__ import annotations

import dataclasses

from nacl.signing import SigningKey

from agentvault.auth.tokens import get_registry
from enrollment.crypto import fingerprint
from enrollment.models import Device
from tenants.models import Member, Tenant, User
from tenants.scope import tenant_scope


@dataclasses.dataclass
class DeviceIdentity:
    """A device row together with its private signing key."""

    device: Device
    signing_key: SigningKey

    @property
    def token(self) -> str:
        """Return a fresh built-in access token for this device."""
        return device_token(self.device)


@dataclasses.dataclass
class TenantWorld:
    """One tenant with an owner admin, a tenant admin, a member and an agent."""

    tenant: Tenant
    owner: Member
    admin: Member
    member: Member
    agent: Member
    owner_device: DeviceIdentity
    admin_device: DeviceIdentity
    member_device: DeviceIdentity
    agent_device: DeviceIdentity
    console_user: User


def make_device(
    member: Member, *, status: str = Device.Status.ACTIVE, name: str = "laptop"
) -> DeviceIdentity:
    """Create a device for ``member`` (inside a scope of its tenant)."""
    key = SigningKey.generate()
    raw = bytes(key.verify_key)
    device = Device.objects.create(
        tenant_id=member.tenant_id,
        member=member,
        name=name,
        identity_key=raw,
        fingerprint=fingerprint(raw),
        status=status,
    )
    return DeviceIdentity(device=device, signing_key=key)


def device_token(device: Device) -> str:
    """Return a built-in access token for ``device``."""
    token, _ = get_registry().builtin.issue(
        device_id=device.pk, member_id=device.member_id, tenant_id=device.tenant_id
    )
    return token


def make_tenant_world(slug: str) -> TenantWorld:
    """Create a tenant with one member of each role, each with an active device."""
    tenant = Tenant.objects.create(name=f"Tenant {slug}", slug=slug)
    console_user = User.objects.create_user(
        username=f"{slug}-admin", password="correct horse battery", tenant=tenant
    )
    console_user.is_staff = True
    console_user.save(update_fields=["is_staff"])

    with tenant_scope(tenant.pk):
        owner = Member.objects.create(
            tenant=tenant, name=f"{slug} owner", role=Member.Role.OWNER_ADMIN
        )
        admin = Member.objects.create(
            tenant=tenant,
            name=f"{slug} admin",
            role=Member.Role.TENANT_ADMIN,
            user=console_user,
        )
        member = Member.objects.create(tenant=tenant, name=f"{slug} member")
        agent = Member.objects.create(
            tenant=tenant,
            name=f"{slug} agent",
            kind=Member.Kind.AGENT,
            role=Member.Role.AGENT,
        )
        owner_device, admin_device, member_device, agent_device = (
            make_device(m) for m in (owner, admin, member, agent)
        )

    return TenantWorld(
        tenant=tenant,
        owner=owner,
        admin=admin,
        member=member,
        agent=agent,
        owner_device=owner_device,
        admin_device=admin_device,
        member_device=member_device,
        agent_device=agent_device,
        console_user=console_user,
    )
