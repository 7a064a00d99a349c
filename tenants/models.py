"""Tenant, console User and Member models."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.translation import gettext_lazy as _


class Tenant(models.Model):
    """An organisation whose members, devices and rooms are isolated from others.

    The tenant registry holds no tenant data itself, so it is not under
    row-level security; every table that does hold tenant data carries a
    ``tenant`` foreign key and a policy.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settings = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """A login identity: a tenant console account or an external OIDC subject.

    This is the global directory consulted before any tenant is known (a
    console login, a token from an external issuer); it maps the identity to
    one tenant. It holds no messages, devices or keys.
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="users"
    )
    oidc_issuer = models.CharField(max_length=255, blank=True, default="")
    oidc_subject = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["oidc_issuer", "oidc_subject"],
                condition=~models.Q(oidc_subject=""),
                name="user_unique_oidc_subject",
            )
        ]


class MemberQuerySet(models.QuerySet["Member"]):
    """Queries over members."""

    def active(self) -> MemberQuerySet:
        """Return members that have not been deactivated."""
        return self.filter(is_active=True)

    def admins(self) -> MemberQuerySet:
        """Return owner and tenant admins."""
        return self.filter(role__in=Member.ADMIN_ROLES)


class Member(models.Model):
    """A principal inside one tenant: a human or an agent."""

    class Kind(models.TextChoices):
        HUMAN = "human", _("Human")
        AGENT = "agent", _("Agent")

    class Role(models.TextChoices):
        OWNER_ADMIN = "owner_admin", _("Owner admin")
        TENANT_ADMIN = "tenant_admin", _("Tenant admin")
        MEMBER = "member", _("Member")
        AGENT = "agent", _("Agent")

    ADMIN_ROLES = (Role.OWNER_ADMIN, Role.TENANT_ADMIN)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.HUMAN)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    user = models.OneToOneField(
        User,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="member",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MemberQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="agent", role="agent")
                | (~models.Q(kind="agent") & ~models.Q(role="agent")),
                name="member_agents_have_agent_role",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_admin(self) -> bool:
        """Return whether this member may administer its tenant."""
        return self.role in self.ADMIN_ROLES

    def may_manage(self, other: Member) -> bool:
        """Return whether this member may invite, approve or revoke for ``other``.

        Owner admins manage everyone. Tenant admins manage themselves and
        members and agents, never another admin: a device they could add to
        an owner admin would read the owner's messages.
        """
        if self.role == self.Role.OWNER_ADMIN:
            return True
        if self.role == self.Role.TENANT_ADMIN:
            return other.pk == self.pk or other.role not in self.ADMIN_ROLES
        return False
