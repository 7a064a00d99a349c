"""Who is calling: the tenant of a token, and the member and device behind it.

The tenant of a built-in token is the ``tid`` claim the server signed itself;
the tenant of an external OIDC subject comes from the console ``User``
directory, never from a custom claim. Device and member status are read from
the database on every request, so approval and revocation apply at once.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING

from agentvault.auth.tokens import TokenError, VerifiedToken

if TYPE_CHECKING:
    from enrollment.models import Device
    from tenants.models import Member


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated member, and the device it called from if any."""

    tenant_id: uuid.UUID
    member: Member
    device: Device | None
    token: VerifiedToken

    is_authenticated = True
    is_anonymous = False

    @property
    def member_id(self) -> uuid.UUID:
        """Return the id of the calling member."""
        return self.member.pk

    @property
    def device_id(self) -> uuid.UUID | None:
        """Return the id of the calling device, if a device token was used."""
        return None if self.device is None else self.device.pk

    @property
    def role(self) -> str:
        """Return the member's role."""
        return self.member.role

    @property
    def is_admin(self) -> bool:
        """Return whether the member administers its tenant."""
        return self.member.is_admin

    @property
    def device_status(self) -> str | None:
        """Return the calling device's status, if a device token was used."""
        return None if self.device is None else self.device.status

    def __repr__(self) -> str:
        return (
            f"Principal(tenant={self.tenant_id}, member={self.member_id}, "
            f"device={self.device_id})"
        )


def tenant_of(token: VerifiedToken) -> uuid.UUID:
    """Return the tenant a verified token acts in, or raise ``TokenError``."""
    if token.kind == "device":
        tenant_id = token.tenant_id
        assert tenant_id is not None
        return tenant_id

    from tenants.models import User

    tenant_id = (
        User.objects.filter(
            oidc_issuer=token.issuer,
            oidc_subject=token.subject,
            is_active=True,
            tenant__isnull=False,
        )
        .values_list("tenant_id", flat=True)
        .first()
    )
    if tenant_id is None:
        raise TokenError("unknown_subject")
    return tenant_id


def resolve_principal(token: VerifiedToken, tenant_id: uuid.UUID) -> Principal:
    """Load the member (and device) behind a token inside its tenant scope.

    Must run inside ``tenant_scope(tenant_id)``. A revoked or unknown device,
    or an inactive member, is refused; a pending device is returned so that
    views can decide what it may still do (read its own status).
    """
    from enrollment.models import Device
    from tenants.models import Member

    if token.kind == "device":
        device = (
            Device.objects.select_related("member")
            .filter(pk=token.subject, member_id=token.claims["mid"])
            .first()
        )
        if device is None or device.status == Device.Status.REVOKED:
            raise TokenError("device_revoked" if device else "invalid_token")
        member = device.member
        if not member.is_active:
            raise TokenError("invalid_token")
        return Principal(tenant_id=tenant_id, member=member, device=device, token=token)

    found = (
        Member.objects.active()
        .filter(
            user__oidc_issuer=token.issuer,
            user__oidc_subject=token.subject,
            user__is_active=True,
        )
        .first()
    )
    if found is None:
        raise TokenError("unknown_subject")
    return Principal(tenant_id=tenant_id, member=found, device=None, token=token)
