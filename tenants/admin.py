"""The tenant console: the Django admin, scoped to the signed-in admin's tenant.

Row-level security is the guarantee (the middleware sets the console user's
tenant for every request); the scoping here is the second layer that keeps
lists, forms, filters and autocompletes friendly and tenant-only:

- querysets are filtered to the tenant;
- foreign-key and many-to-many choices come from the tenant only;
- the ``tenant`` field is never shown and is set from the request on save;
- only owner admins and tenant admins (a ``Member`` linked to the login) may
  use the console, and only owner admins change tenant settings and roles.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from tenants.actions import do_add_member, do_update_member, do_update_tenant_settings
from tenants.models import Member, Tenant


def console_member(request: HttpRequest) -> Member | None:
    """Return the active admin member behind a console session, if any."""
    if hasattr(request, "_console_member"):
        return request._console_member  # type: ignore[no-any-return]

    member = None
    user = getattr(request, "user", None)
    tenant_id = getattr(request, "tenant_id", None)
    if user is not None and user.is_authenticated and user.is_staff and tenant_id:
        member = (
            Member.objects.active()
            .admins()
            .filter(user_id=user.pk, tenant_id=tenant_id)
            .first()
        )
    request._console_member = member  # type: ignore[attr-defined]
    return member


def _has_tenant_field(model: type[Model]) -> bool:
    return any(field.name == "tenant" for field in model._meta.concrete_fields)


class TenantScopedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """A ModelAdmin that shows and edits only the console admin's tenant."""

    # Set to True on admins whose changes only owner admins may make.
    owner_only = False
    list_select_related = True

    def _allowed(self, request: HttpRequest, *, write: bool = False) -> bool:
        member = console_member(request)
        if member is None:
            return False
        if write and self.owner_only:
            return member.role == Member.Role.OWNER_ADMIN
        return True

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Show the module to tenant console admins."""
        return self._allowed(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Let console admins view their tenant's objects."""
        return self._allowed(request)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        """Let console admins add objects (owner admins where owner-only)."""
        return self._allowed(request, write=True)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Let console admins change objects (owner admins where owner-only)."""
        return self._allowed(request, write=True)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Deletion goes through audited actions, never the generic view."""
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        """Return the tenant's objects only."""
        queryset = super().get_queryset(request)
        tenant_id = getattr(request, "tenant_id", None)
        if tenant_id is None:
            return queryset.none()
        if self.model is Tenant:
            return queryset.filter(pk=tenant_id)
        if _has_tenant_field(self.model):
            return queryset.filter(tenant_id=tenant_id)
        return queryset

    def get_exclude(self, request: HttpRequest, obj: Any = None) -> Any:
        """Never show the tenant field."""
        excluded = list(super().get_exclude(request, obj) or [])
        return [*excluded, "tenant"] if _has_tenant_field(self.model) else excluded

    def _scope_choices(
        self, request: HttpRequest, queryset: QuerySet[Any] | None
    ) -> QuerySet[Any] | None:
        tenant_id = getattr(request, "tenant_id", None)
        if queryset is None:
            return None
        if tenant_id is None:
            return queryset.none()
        if queryset.model is Tenant:
            return queryset.filter(pk=tenant_id)
        if _has_tenant_field(queryset.model):
            return queryset.filter(tenant_id=tenant_id)
        if queryset.model._meta.label_lower == "tenants.user":
            return queryset.filter(tenant_id=tenant_id)
        return queryset

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> Any:
        """Offer only the tenant's objects as foreign-key choices."""
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None and hasattr(field, "queryset"):
            field.queryset = self._scope_choices(request, field.queryset)
        return field

    def formfield_for_manytomany(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> Any:
        """Offer only the tenant's objects as many-to-many choices."""
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if field is not None and hasattr(field, "queryset"):
            field.queryset = self._scope_choices(request, field.queryset)
        return field

    def save_model(
        self, request: HttpRequest, obj: Any, form: ModelForm[Any], change: bool
    ) -> None:
        """Stamp new objects with the request's tenant, then save."""
        if not change and _has_tenant_field(self.model):
            obj.tenant_id = request.tenant_id  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    """The console admin's own tenant: name and settings (owner admins)."""

    owner_only = True
    list_display = ["name", "slug", "created_at"]
    readonly_fields = ["slug", "created_at"]
    fields = ["name", "slug", "settings", "created_at"]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        """Tenants are created by operators with ``manage.py create_tenant``."""
        return False

    def save_model(
        self, request: HttpRequest, obj: Any, form: ModelForm[Any], change: bool
    ) -> None:
        """Save through the audited action."""
        do_update_tenant_settings(
            obj, fields=list(form.changed_data), acting=console_member(request)
        )


@admin.register(Member)
class MemberAdmin(TenantScopedAdmin):
    """Members of the tenant; role changes are for owner admins and audited."""

    list_display = ["name", "kind", "role", "is_active", "created_at"]
    list_filter = ["kind", "role", "is_active"]
    search_fields = ["name"]
    fields = ["name", "kind", "role", "is_active", "user"]

    def _is_owner(self, request: HttpRequest) -> bool:
        member = console_member(request)
        return member is not None and member.role == Member.Role.OWNER_ADMIN

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Let tenant admins change members and agents; admins are the owners'."""
        if not super().has_change_permission(request, obj):
            return False
        acting = console_member(request)
        return obj is None or (acting is not None and acting.may_manage(obj))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Only owner admins may change roles or console links."""
        if self._is_owner(request):
            return ["kind"] if obj else []
        return ["kind", "role", "user"] if obj else ["user"]

    def formfield_for_choice_field(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> Any:
        """Offer admin roles to owner admins only."""
        field = super().formfield_for_choice_field(db_field, request, **kwargs)
        if (
            field is not None
            and db_field.name == "role"
            and not self._is_owner(request)
        ):
            field.choices = [
                (value, label)
                for value, label in db_field.choices or []
                if value not in Member.ADMIN_ROLES
            ]
        return field

    def save_model(
        self, request: HttpRequest, obj: Any, form: ModelForm[Any], change: bool
    ) -> None:
        """Save through the audited actions."""
        acting = console_member(request)
        if not change:
            obj.tenant_id = request.tenant_id  # type: ignore[attr-defined]
            do_add_member(obj, acting=acting)
            return
        changed = {name: True for name in form.changed_data}
        do_update_member(
            obj, changed=changed, previous=dict(form.initial), acting=acting
        )
