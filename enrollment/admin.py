"""The tenant console for invites and devices.

- Invites are created through a form that shows the token once, on the page
  that answers the form: it is never stored, put in a message or logged.
- Devices are never edited; admins approve or revoke them with actions
  whose confirmation page shows each device's fingerprint to compare.
- Every change goes through ``enrollment.actions``, so it is audited and
  sends the same signals as the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from agentvault.errors import ApiError
from enrollment import actions
from enrollment.models import Device, Invite
from tenants.admin import TenantScopedAdmin, console_member
from tenants.models import Member


class InviteForm(forms.ModelForm):  # type: ignore[type-arg]
    """A new invite: for a new member, or another device of an existing one."""

    hours = forms.IntegerField(
        min_value=1,
        max_value=168,
        initial=24,
        help_text=_("Lifetime in hours (at most 7 days)."),
    )

    class Meta:
        model = Invite
        fields = ["member", "member_name", "member_kind", "member_role"]

    def clean(self) -> dict[str, Any]:
        """Require an existing member, or a name, kind and role."""
        data = super().clean() or {}
        fresh = [data.get(f) for f in ("member_name", "member_kind", "member_role")]
        if data.get("member") and any(fresh):
            raise forms.ValidationError(_("Choose a member, or describe a new one."))
        if not data.get("member") and not all(fresh):
            raise forms.ValidationError(
                _("Give the new member's name, kind and role, or choose a member.")
            )
        kind, role = data.get("member_kind"), data.get("member_role")
        if kind and role and (kind == "agent") != (role == "agent"):
            raise forms.ValidationError(
                _("Agents have the agent role, and only agents do.")
            )
        return data


def _apply(
    act: Callable[..., Any], devices: QuerySet[Device], request: HttpRequest
) -> tuple[int, int]:
    """Apply an audited device action to each device; count done and refused."""
    acting = console_member(request)
    done = refused = 0
    for device in devices:
        try:
            act(device, acting=acting)
            done += 1
        except ApiError:
            refused += 1
    return done, refused


@admin.register(Invite)
class InviteAdmin(TenantScopedAdmin):
    """Invites of the tenant: create (token shown once) and revoke."""

    form = InviteForm
    list_display = ["id", "invitee", "status", "created_at", "expires_at", "used_at"]
    list_filter = ["member_kind", "member_role"]
    readonly_fields = ["status", "created_at", "expires_at", "used_at", "revoked_at"]
    actions = ["revoke_invites"]

    @admin.display(description=_("Invitee"))
    def invitee(self, invite: Invite) -> str:
        """Return who the invite is for."""
        if invite.member_id:
            return f"{invite.member} ({_('another device')})"
        return f"{invite.member_name} ({invite.member_kind}, {invite.member_role})"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Invites are never edited, only created and revoked."""
        return obj is None and super().has_change_permission(request)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Let console admins revoke invites."""
        return self._allowed(request)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Show the invitee on add, the state when viewing."""
        if obj is None:
            return ["member", "member_name", "member_kind", "member_role", "hours"]
        return [
            "member",
            "member_name",
            "member_kind",
            "member_role",
            *self.readonly_fields,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Nothing of an existing invite can change."""
        if obj is None:
            return []
        return [
            "member",
            "member_name",
            "member_kind",
            "member_role",
            *self.readonly_fields,
        ]

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> Any:
        """Offer only the tenant's active members."""
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "member" and field is not None:
            field.queryset = field.queryset.filter(is_active=True)
            admin_member = console_member(request)
            if admin_member is not None and admin_member.role != "owner_admin":
                # Tenant admins invite devices for themselves and non-admins.
                field.queryset = field.queryset.filter(
                    Q(pk=admin_member.pk) | ~Q(role__in=Member.ADMIN_ROLES)
                )
        return field

    def formfield_for_choice_field(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> Any:
        """Offer admin roles for new members to owner admins only."""
        field = super().formfield_for_choice_field(db_field, request, **kwargs)
        admin_member = console_member(request)
        if (
            field is not None
            and db_field.name == "member_role"
            and admin_member is not None
            and admin_member.role != "owner_admin"
        ):
            field.choices = [
                (value, label)
                for value, label in db_field.choices or []
                if value not in Member.ADMIN_ROLES
            ]
        return field

    @sensitive_variables("created")
    def save_model(
        self, request: HttpRequest, obj: Any, form: Any, change: bool
    ) -> None:
        """Create through the audited action; keep the token for this response."""
        data = form.cleaned_data
        created = actions.do_create_invite(
            tenant_id=request.tenant_id,  # type: ignore[attr-defined]
            acting=console_member(request),
            member=data.get("member"),
            name=data.get("member_name") or "",
            kind=data.get("member_kind") or "",
            role=data.get("member_role") or "",
            lifetime=int(data["hours"]) * 3600,
        )
        request._created_invite = created  # type: ignore[attr-defined]

    def save_related(
        self, request: HttpRequest, form: Any, formsets: Any, change: bool
    ) -> None:
        """Invites have no related objects to save."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        """Skip the admin history: the audit trail records the invite."""
        return None

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: Any = None
    ) -> HttpResponse:
        """Answer with the token, shown on this page only."""
        created = request._created_invite  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Invite created"),
            "invite": created.invite,
            "token": created.token,
        }
        response = TemplateResponse(
            request, "admin/enrollment/invite_token.html", context
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description=_("Revoke selected invites"), permissions=["revoke"])
    def revoke_invites(self, request: HttpRequest, queryset: QuerySet[Invite]) -> None:
        """Revoke each open invite; used ones are left as they are."""
        acting = console_member(request)
        done = skipped = 0
        for invite in queryset:
            try:
                actions.do_revoke_invite(invite, acting=acting)
                done += 1
            except ApiError:
                skipped += 1
        self.message_user(
            request,
            _("Revoked %(done)d invite(s); %(skipped)d already used.")
            % {"done": done, "skipped": skipped},
        )


@admin.register(Device)
class DeviceAdmin(TenantScopedAdmin):
    """Devices of the tenant: approve and revoke after comparing fingerprints."""

    list_display = [
        "name",
        "member",
        "status",
        "fingerprint",
        "created_at",
        "last_seen_at",
    ]
    list_filter = ["status"]
    search_fields = ["name", "member__name"]
    fields = (
        "name",
        "member",
        "status",
        "fingerprint",
        "created_at",
        "approved_at",
        "revoked_at",
        "last_seen_at",
    )
    readonly_fields = fields
    actions = ["approve_devices", "revoke_devices"]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        """Devices join by enrolling with an invite, never from the console."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Devices are never edited; they are approved or revoked."""
        return False

    def has_approve_permission(self, request: HttpRequest) -> bool:
        """Let console admins approve devices."""
        return self._allowed(request)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Let console admins revoke devices."""
        return self._allowed(request)

    def _confirm(
        self,
        request: HttpRequest,
        queryset: QuerySet[Device],
        *,
        action: str,
        verb: Any,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Compare fingerprints, then confirm"),
            "devices": list(queryset.select_related("member")),
            "action": action,
            "verb": verb,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(
            request, "admin/enrollment/device_confirm.html", context
        )

    @admin.action(description=_("Approve selected devices"), permissions=["approve"])
    def approve_devices(
        self, request: HttpRequest, queryset: QuerySet[Device]
    ) -> HttpResponse | None:
        """Ask for confirmation with fingerprints, then approve pending devices."""
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request, queryset, action="approve_devices", verb=_("Approve")
            )
        done, refused = _apply(actions.do_approve_device, queryset, request)
        self.message_user(
            request,
            _(
                "Approved %(done)d device(s); %(refused)d refused (revoked, or "
                "not yours to approve)."
            )
            % {"done": done, "refused": refused},
        )
        return None

    @admin.action(description=_("Revoke selected devices"), permissions=["revoke"])
    def revoke_devices(
        self, request: HttpRequest, queryset: QuerySet[Device]
    ) -> HttpResponse | None:
        """Ask for confirmation with fingerprints, then revoke the devices."""
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request, queryset, action="revoke_devices", verb=_("Revoke")
            )
        count, refused = _apply(actions.do_revoke_device, queryset, request)
        self.message_user(
            request,
            _("Revoked %(count)d device(s); %(refused)d not yours to revoke.")
            % {"count": count, "refused": refused},
            messages.SUCCESS,
        )
        return None
