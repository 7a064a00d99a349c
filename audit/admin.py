"""The audit trail in the tenant console: read-only and filterable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.models import AuditEvent, SecurityAlert
from tenants.admin import TenantScopedAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(TenantScopedAdmin):
    """List and inspect the tenant's audit events; nothing can be changed."""

    list_display = [
        "id",
        "occurred_at",
        "action",
        "actor_kind",
        "actor_id",
        "target_kind",
        "target_id",
        "client_ip",
    ]
    list_filter = ["action", "actor_kind", "target_kind"]
    search_fields = ["action", "actor_id", "target_id", "correlation_id"]
    date_hierarchy = "occurred_at"
    ordering = ["-id"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Show every field read-only."""
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        """Events are written by actions, never by hand."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Events never change."""
        return False


@admin.register(SecurityAlert)
class SecurityAlertAdmin(AuditEventAdmin):
    """Recent security alerts of the tenant (failure spikes), read-only."""

    list_display = [
        "occurred_at",
        "action",
        "target_kind",
        "target_id",
        "client_ip",
        "details",
    ]
    list_filter = ["action", "target_kind"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        """Return the tenant's ``security.*`` events only."""
        return super().get_queryset(request).filter(action__startswith="security.")
