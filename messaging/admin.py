"""Tenant console pages for rooms, memberships and delivery queues."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from messaging import actions
from messaging.models import DeviceQueue, Room, RoomMembership
from tenants.admin import TenantScopedAdmin, console_member


@admin.register(Room)
class RoomAdmin(TenantScopedAdmin):
    """Rooms of the tenant; creating one is audited."""

    list_display = ["name", "created_at", "member_count"]
    search_fields = ["name"]
    fields = ["name", "created_at"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        """Return the tenant's rooms with their memberships."""
        return super().get_queryset(request).prefetch_related("memberships")

    @admin.display(description="members")
    def member_count(self, room: Room) -> int:
        """Return how many members the room has."""
        return len(room.memberships.all())

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Rooms are not deleted from the console (their history stays)."""
        return False

    def save_model(
        self, request: HttpRequest, obj: Any, form: ModelForm[Any], change: bool
    ) -> None:
        """Create through the audited action; renaming is a plain save."""
        if change:
            super().save_model(request, obj, form, change)
            return
        room = actions.do_create_room(
            obj.name,
            tenant_id=request.tenant_id,  # type: ignore[attr-defined]
            acting=console_member(request),
        )
        obj.pk, obj.tenant_id, obj.created_at = room.pk, room.tenant_id, room.created_at
        obj._state.adding = False


@admin.register(RoomMembership)
class RoomMembershipAdmin(TenantScopedAdmin):
    """Who is in which room; adding and removing are audited."""

    list_display = ["room", "member", "created_at"]
    list_filter = ["room"]
    fields = ["room", "member"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """A membership is added or removed, never edited."""
        return obj is None and super().has_change_permission(request, obj)

    def save_model(
        self, request: HttpRequest, obj: Any, form: ModelForm[Any], change: bool
    ) -> None:
        """Add through the audited action."""
        actions.do_add_room_member(obj.room, obj.member, acting=console_member(request))
        saved = RoomMembership.objects.get(room=obj.room, member=obj.member)
        obj.pk, obj.tenant_id = saved.pk, saved.tenant_id
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        """Remove through the audited action."""
        actions.do_remove_room_member(
            obj.room, obj.member, acting=console_member(request)
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Remove each selected membership through the audited action."""
        for membership in queryset.select_related("room", "member"):
            self.delete_model(request, membership)


@admin.register(DeviceQueue)
class DeviceQueueAdmin(TenantScopedAdmin):
    """Queue depth per device: what waits for each device to come online."""

    list_display = ["device", "member", "depth", "last_seq", "acked_seq"]
    list_select_related = ["device", "device__member"]  # type: ignore[assignment]
    ordering = ["-depth"]
    fields = ["device", "depth", "last_seq", "acked_seq"]
    readonly_fields = ["device", "depth", "last_seq", "acked_seq"]

    @admin.display(description="member")
    def member(self, queue: DeviceQueue) -> str:
        """Return the member owning the device."""
        return str(queue.device.member)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        """Queues are created by the relay."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Queues are read-only in the console."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Queues are emptied by acknowledgement, revocation or pruning."""
        return False
