"""REST endpoints of rooms, sends, the inbox and acknowledgements.

Every view runs inside the request's tenant scope (the tenant middleware), so
each query sees only the caller's tenant; another tenant's room or member
answers 404 ``not_found`` exactly like a missing one.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentvault.auth.drf import IsActiveDevice, IsTenantAdmin
from agentvault.auth.principal import Principal
from agentvault.errors import BadRequestError
from agentvault.observability import metrics
from agentvault.schema import errors
from enrollment.models import Device
from messaging import actions
from messaging.conf import messaging_settings
from messaging.errors import (
    DeviceRequiredError,
    MemberNotFoundError,
    PayloadTooLargeError,
    RoomNotFoundError,
)
from messaging.models import DeviceQueue, Room, RoomMembership
from messaging.serializers import (
    AckResultSerializer,
    AckSerializer,
    CreateRoomSerializer,
    InboxSerializer,
    RoomDevicesSerializer,
    RoomListSerializer,
    RoomMemberSerializer,
    RoomSerializer,
    SendResultSerializer,
    SendSerializer,
    inbox_entry,
    parse_send,
    room_device,
)
from tenants.models import Member


def _principal(request: Request) -> Principal:
    principal = request.user
    assert isinstance(principal, Principal)
    return principal


def _member(request: Request) -> Member:
    member = _principal(request).member
    assert isinstance(member, Member)
    return member


def _device(request: Request) -> Device:
    device = _principal(request).device
    if device is None:
        raise DeviceRequiredError()
    assert isinstance(device, Device)
    return device


def _room_shape(room: Room) -> dict[str, Any]:
    fresh = Room.objects.prefetch_related(
        Prefetch("memberships", queryset=RoomMembership.objects.order_by("id"))
    ).get(pk=room.pk)
    return dict(RoomSerializer(fresh).data)


class RoomsView(APIView):
    """``GET /rooms`` lists the caller's rooms (all for admins); ``POST`` creates."""

    def get_permissions(self) -> list[BasePermission]:
        """Let admins create rooms and any active caller list its own."""
        if self.request.method == "POST":
            return [IsTenantAdmin()]
        return [IsActiveDevice()]

    @extend_schema(responses={200: RoomListSerializer})
    def get(self, request: Request) -> Response:
        """Return the rooms the caller may see."""
        rooms = actions.get_rooms(member=_member(request))
        return Response({"rooms": RoomSerializer(rooms, many=True).data})

    @extend_schema(
        request=CreateRoomSerializer,
        responses={201: RoomSerializer, **errors(404)},
    )
    def post(self, request: Request) -> Response:
        """Create a room with its first members."""
        serializer = CreateRoomSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        members = [actions.access_member(member_id) for member_id in data["members"]]
        principal = _principal(request)

        room = actions.do_create_room(
            data["name"],
            tenant_id=principal.tenant_id,
            members=members,
            acting=principal,
        )
        return Response(_room_shape(room), status=201)


class RoomMembersView(APIView):
    """``POST`` adds and ``DELETE`` removes a member of a room (admins)."""

    permission_classes = [IsTenantAdmin]

    def _load(
        self, request: Request, room_id: str, member_id: Any
    ) -> tuple[Room, Member]:
        room = actions.access_room(room_id, member=_member(request))
        if member_id is None:
            serializer = RoomMemberSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            member_id = serializer.validated_data["member_id"]
        return room, actions.access_member(member_id)

    @extend_schema(
        request=RoomMemberSerializer,
        responses={201: RoomSerializer, 200: RoomSerializer, **errors(404)},
    )
    def post(self, request: Request, room_id: str) -> Response:
        """Add the member named in the body; 201 when added, 200 if present."""
        room, member = self._load(request, room_id, None)
        added = actions.do_add_room_member(room, member, acting=_principal(request))
        return Response(_room_shape(room), status=201 if added else 200)

    @extend_schema(
        description="Remove the member named by ``member_id`` in a JSON body.",
        responses={204: None, **errors(400, 404, 415)},
    )
    def delete(
        self, request: Request, room_id: str, member_id: str | None = None
    ) -> Response:
        """Remove the member named in the path or body; 404 if not a member."""
        room, member = self._load(request, room_id, member_id)
        removed = actions.do_remove_room_member(
            room, member, acting=_principal(request)
        )
        if not removed:
            raise MemberNotFoundError()
        return Response(status=204)


class RoomMemberView(RoomMembersView):
    """``DELETE /rooms/{id}/members/{member_id}`` removes a member (admins)."""

    http_method_names = ["delete", "options"]

    @extend_schema(
        operation_id="rooms_member_destroy", responses={204: None, **errors(404)}
    )
    def delete(
        self, request: Request, room_id: str, member_id: str | None = None
    ) -> Response:
        """Remove the member named in the path; 404 if not a member."""
        return super().delete(request, room_id, member_id)


class RoomDevicesView(APIView):
    """``GET /rooms/{id}/devices``: active devices of the room's members."""

    @extend_schema(responses={200: RoomDevicesSerializer, **errors(404)})
    def get(self, request: Request, room_id: str) -> Response:
        """Return the devices with their identity keys (queue depth for admins)."""
        member = _member(request)
        room = actions.access_room(room_id, member=member)
        devices = actions.get_room_devices(room)

        depths: dict[Any, int] | None = None
        if member.is_admin:
            depths = dict(
                DeviceQueue.objects.filter(
                    device_id__in=[device.pk for device in devices]
                ).values_list("device_id", "depth")
            )
        shapes = [
            room_device(
                device, queue_depth=None if depths is None else depths.get(device.pk, 0)
            )
            for device in devices
        ]
        return Response({"room_id": str(room.pk), "devices": shapes})


class RoomMessagesView(APIView):
    """``POST /rooms/{id}/messages``: send one envelope per recipient device."""

    @extend_schema(
        request=SendSerializer,
        responses={
            201: SendResultSerializer,
            200: SendResultSerializer,
            **errors(404, 409, 410, 413, 507),
        },
    )
    def post(self, request: Request, room_id: str) -> Response:
        """Store the message durably; 201 with its id, or the first result again."""
        limit = int(messaging_settings.MAX_REQUEST_BYTES)
        if len(request.body) > limit:
            raise PayloadTooLargeError()
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nested deeper than the decoder can follow.
            raise BadRequestError(code="malformed_request") from None
        send = parse_send(body)

        device = _device(request)
        member = _member(request)
        actions.check_send_rate(device.pk)
        room = actions.access_room(room_id, member=member)
        if not room.memberships.filter(member=member).exists():
            raise RoomNotFoundError()

        result = actions.do_send_message(
            room.pk,
            tenant_id=_principal(request).tenant_id,
            sender=device,
            client_message_id=send.client_message_id,
            envelopes=send.envelopes,
        )
        return Response(
            {
                "message_id": str(result.message_id),
                "server_ts": result.server_ts.isoformat(),
            },
            status=201 if result.created else 200,
        )


class InboxView(APIView):
    """``GET /devices/me/inbox?after=&limit=``: queued envelopes in order."""

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Return envelopes after it."),
            OpenApiParameter("limit", int, description="At most this many."),
        ],
        responses={200: InboxSerializer, **errors(400)},
    )
    def get(self, request: Request) -> Response:
        """Return envelopes with ``seq > after``, at most ``limit`` of them."""
        after = _int_param(request, "after", 0, 0, 2**62)
        default = int(messaging_settings.INBOX_DEFAULT_LIMIT)
        limit = _int_param(
            request, "limit", default, 1, messaging_settings.INBOX_MAX_LIMIT
        )
        device = _device(request)

        entries = actions.get_inbox(
            device.pk, tenant_id=device.tenant_id, after=after, limit=limit
        )
        metrics.ENVELOPES_PUSHED.labels("rest").inc(len(entries))
        return Response({"envelopes": [inbox_entry(entry) for entry in entries]})


class InboxAckView(APIView):
    """``POST /devices/me/inbox/ack {up_to_seq}``: delete what was received."""

    @extend_schema(request=AckSerializer, responses={200: AckResultSerializer})
    def post(self, request: Request) -> Response:
        """Delete the caller's deliveries up to ``up_to_seq``."""
        serializer = AckSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device = _device(request)

        acked, deleted = actions.do_ack(
            device.pk,
            serializer.validated_data["up_to_seq"],
            tenant_id=device.tenant_id,
        )
        return Response({"acked_seq": acked, "deleted": deleted})


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(fields={name: ["Must be an integer."]}) from None
    if not low <= value <= int(high):
        raise BadRequestError(fields={name: [f"Must be between {low} and {high}."]})
    return value
