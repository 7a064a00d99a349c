"""Thin API views of enrollment, device authentication and the prekey directory.

Authenticated views run inside the tenant scope the middleware opened from
the token. The three unauthenticated views (enroll, challenge, token) count
the attempt first and open their own scope once the tenant is known.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentvault import abuse
from agentvault.auth.drf import IsActiveDevice, IsTenantAdmin, _principal
from agentvault.auth.principal import Principal
from agentvault.context import request_client_ip
from agentvault.errors import BadRequestError, ForbiddenError, NotFoundError
from agentvault.observability.metrics import AUTH_FAILURES
from agentvault.schema import errors
from enrollment import actions, limits
from enrollment.conf import option
from enrollment.errors import ChallengeFailedError, InvalidKeyError
from enrollment.models import Device, Invite
from enrollment.serializers import (
    AccessTokenSerializer,
    ChallengeRequestSerializer,
    ChallengeSerializer,
    DeviceSerializer,
    EnrollmentResultSerializer,
    EnrollmentSerializer,
    InviteCreatedSerializer,
    InviteCreateSerializer,
    InviteSerializer,
    PrekeyBundleSerializer,
    PrekeyCountSerializer,
    PrekeyStatusSerializer,
    PrekeyUploadSerializer,
    TokenRequestSerializer,
)
from tenants.models import Member


class IsDevice(BasePermission):
    """Allow any device token, pending ones included (revoked never resolve)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Return whether the caller authenticated as a device."""
        principal = _principal(request)
        return principal is not None and principal.device is not None


class IsActiveDeviceToken(IsActiveDevice):
    """Allow approved devices calling with a device token."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Return whether the caller is an approved device."""
        principal = _principal(request)
        return super().has_permission(request, view) and bool(
            principal and principal.device is not None
        )


def _caller(request: Request) -> Principal:
    """Return the authenticated principal (the view's permission ensured it)."""
    principal = _principal(request)
    assert principal is not None
    return principal


def _device(request: Request) -> Device:
    """Return the calling device (the view's permission ensured there is one)."""
    device = _caller(request).device
    assert isinstance(device, Device)
    return device


def _valid(serializer: Any) -> dict[str, Any]:
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data  # type: ignore[no-any-return]


def _b64(value: bytes) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def access_device(principal: Principal, device_id: uuid.UUID) -> Device:
    """Return a device of the caller's tenant, or ``not_found``.

    Row-level security already hides other tenants' devices; the tenant
    filter states it again.
    """
    device = (
        Device.objects.select_related("member")
        .filter(pk=device_id, tenant_id=principal.tenant_id)
        .first()
    )
    if device is None:
        raise NotFoundError()
    return device


# --- Invites -------------------------------------------------------------------


@method_decorator(sensitive_post_parameters(), name="dispatch")
class InviteListView(APIView):
    """``GET``: the tenant's invites. ``POST``: create one; its token shows once."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(responses={200: InviteSerializer(many=True)})
    def get(self, request: Request) -> Response:
        """List invites, newest first."""
        invites = Invite.objects.filter(tenant_id=_caller(request).tenant_id)[:500]
        return Response(InviteSerializer(invites, many=True).data)

    @extend_schema(
        request=InviteCreateSerializer,
        responses={201: InviteCreatedSerializer, **errors(404)},
    )
    def post(self, request: Request) -> Response:
        """Create an invite."""
        data = _valid(InviteCreateSerializer(data=request.data))
        principal = _caller(request)

        member = None
        if "member_id" in data:
            member = (
                Member.objects.active()
                .filter(pk=data["member_id"], tenant_id=principal.tenant_id)
                .first()
            )
            if member is None:
                raise NotFoundError()

        created = actions.do_create_invite(
            tenant_id=principal.tenant_id,
            acting=principal,
            member=member,
            name=data.get("name", ""),
            kind=data.get("kind", ""),
            role=data.get("role", ""),
            lifetime=data.get("expires_in"),
        )
        body = {**InviteSerializer(created.invite).data, "token": created.token}
        return Response(body, status=201)


class InviteRevokeView(APIView):
    """``POST /invites/{id}/revoke``."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses={200: InviteSerializer, **errors(404, 409)})
    def post(self, request: Request, invite_id: uuid.UUID) -> Response:
        """Revoke an open invite (idempotent)."""
        invite = Invite.objects.filter(
            pk=invite_id, tenant_id=_caller(request).tenant_id
        ).first()
        if invite is None:
            raise NotFoundError()
        invite = actions.do_revoke_invite(invite, acting=_caller(request))
        return Response(InviteSerializer(invite).data)


# --- Enrollment and device authentication -------------------------------------


@method_decorator(sensitive_post_parameters(), name="dispatch")
class EnrollmentView(APIView):
    """``POST /enrollments``: redeem an invite for a pending device."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=EnrollmentSerializer,
        responses={201: EnrollmentResultSerializer, **errors(409, 429)},
    )
    def post(self, request: Request) -> Response:
        """Enroll; every attempt counts toward the per-address limit."""
        limits.count_enrollment_attempt(request)
        serializer = EnrollmentSerializer(data=request.data)
        if not serializer.is_valid() and "identity_key" in serializer.errors:
            raise InvalidKeyError()
        data = _valid(serializer)

        device = actions.do_enroll_device(
            invite_token=data["invite_token"],
            identity_key=data["identity_key"],
            device_name=data["device_name"],
            proof=data["proof"],
        )
        body = {
            "device_id": str(device.pk),
            "member_id": str(device.member_id),
            "tenant_id": str(device.tenant_id),
            "status": device.status,
            "fingerprint": device.fingerprint,
        }
        return Response(body, status=201)


class ChallengeView(APIView):
    """``POST /auth/challenge``: a single-use challenge for a device."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=ChallengeRequestSerializer,
        responses={200: ChallengeSerializer, **errors(429)},
    )
    def post(self, request: Request) -> Response:
        """Return a challenge, whether or not the device exists."""
        abuse.check_request_not_blocked(request)
        limits.count_auth_attempt(request)
        data = _valid(ChallengeRequestSerializer(data=request.data))
        abuse.check_request_not_blocked(request, device_id=data["device_id"])
        challenge = actions.do_issue_challenge(data["device_id"])
        body = {
            "challenge": _b64(challenge),
            "expires_in": int(option("CHALLENGE_LIFETIME")),
        }
        return Response(body)


@method_decorator(sensitive_post_parameters(), name="dispatch")
class TokenView(APIView):
    """``POST /auth/token``: exchange a signed challenge for an access token."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=TokenRequestSerializer,
        responses={200: AccessTokenSerializer, **errors(401, 429)},
    )
    def post(self, request: Request) -> Response:
        """Issue a bearer token for the device that signed the challenge."""
        abuse.check_request_not_blocked(request)
        limits.count_auth_attempt(request)
        data = _valid(TokenRequestSerializer(data=request.data))
        abuse.check_request_not_blocked(request, device_id=data["device_id"])
        try:
            access_token, expires_in = actions.do_issue_device_token(
                data["device_id"],
                challenge=data["challenge"],
                signature=data["signature"],
            )
        except ChallengeFailedError:
            _note_challenge_failure(request, data["device_id"])
            raise
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }
        return Response(body, headers={"Cache-Control": "no-store"})


def _note_challenge_failure(request: Request, device_id: uuid.UUID) -> None:
    """Count a refused challenge answer against the address and the device."""
    AUTH_FAILURES.labels(transport="challenge", reason="bad_signature").inc()
    failure = abuse.AuthFailure(
        transport="challenge",
        reason="bad_signature",
        ip=request_client_ip(request),
        device_id=device_id,
    )
    abuse.do_note_auth_failure(failure)


# --- Devices -------------------------------------------------------------------


class DeviceListView(APIView):
    """``GET /devices``: every device of the tenant (admins)."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(
        parameters=[OpenApiParameter("status", str, enum=list(Device.Status.values))],
        responses={200: DeviceSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        """List devices, optionally filtered by ``?status=``."""
        devices = Device.objects.select_related("member").filter(
            tenant_id=_caller(request).tenant_id
        )
        status = request.query_params.get("status")
        if status:
            if status not in Device.Status.values:
                raise BadRequestError(fields={"status": ["Unknown status."]})
            devices = devices.filter(status=status)
        return Response(DeviceSerializer(devices, many=True).data)


class DeviceMeView(APIView):
    """``GET /devices/me``: the calling device, pending devices included."""

    permission_classes = [IsDevice]

    @extend_schema(responses={200: DeviceSerializer})
    def get(self, request: Request) -> Response:
        """Return the calling device's status and fingerprint."""
        return Response(DeviceSerializer(_device(request)).data)


class DeviceApproveView(APIView):
    """``POST /devices/{id}/approve`` (admins)."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses={200: DeviceSerializer, **errors(404, 409)})
    def post(self, request: Request, device_id: uuid.UUID) -> Response:
        """Approve a pending device (idempotent)."""
        device = access_device(_caller(request), device_id)
        device = actions.do_approve_device(device, acting=_caller(request))
        return Response(DeviceSerializer(device).data)


class DeviceRevokeView(APIView):
    """``POST /devices/{id}/revoke`` (admins, or the device itself)."""

    permission_classes = [IsActiveDevice]

    @extend_schema(request=None, responses={200: DeviceSerializer, **errors(404)})
    def post(self, request: Request, device_id: uuid.UUID) -> Response:
        """Revoke a device (idempotent)."""
        principal = _caller(request)
        device = access_device(principal, device_id)
        if not principal.is_admin and device.pk != principal.device_id:
            raise ForbiddenError()
        device = actions.do_revoke_device(device, acting=principal)
        return Response(DeviceSerializer(device).data)


# --- Prekeys -------------------------------------------------------------------


class PrekeysView(APIView):
    """``PUT``/``GET /devices/me/prekeys``: the calling device's prekeys."""

    permission_classes = [IsActiveDeviceToken]

    @extend_schema(
        request=PrekeyUploadSerializer,
        responses={200: PrekeyCountSerializer, **errors(409, 422)},
    )
    def put(self, request: Request) -> Response:
        """Publish a signed prekey and one-time prekeys."""
        serializer = PrekeyUploadSerializer(
            data=request.data, per_upload=int(option("PREKEYS_PER_UPLOAD"))
        )
        data = _valid(serializer)
        signed = data.get("signed_prekey")
        count = actions.do_upload_prekeys(
            _device(request),
            signed_prekey=actions.SignedPrekeyUpload(
                key_id=signed["id"],
                public_key=signed["public_key"],
                signature=signed["signature"],
            )
            if signed
            else None,
            one_time_prekeys=[
                actions.OneTimePrekeyUpload(key_id=p["id"], public_key=p["public_key"])
                for p in data.get("one_time_prekeys", [])
            ],
        )
        return Response({"one_time_prekeys": count})

    @extend_schema(responses={200: PrekeyStatusSerializer})
    def get(self, request: Request) -> Response:
        """Return the count of one-time prekeys left and the signed prekey id."""
        return Response(actions.get_prekey_status(_device(request)))


class PrekeyBundlesView(APIView):
    """``POST /members/{id}/prekey-bundles``: claim a member's device bundles."""

    permission_classes = [IsActiveDeviceToken]

    @extend_schema(
        request=None,
        responses={200: PrekeyBundleSerializer(many=True), **errors(404)},
    )
    def post(self, request: Request, member_id: uuid.UUID) -> Response:
        """Return one bundle per active device of the member but the caller."""
        principal = _caller(request)
        devices = actions.access_bundle_devices(principal, member_id)
        for device in devices:
            limits.count_bundle_claim(
                request, caller=str(principal.device_id), target=str(device.pk)
            )

        bundles = actions.do_claim_prekey_bundles(devices)
        body = []
        for bundle in bundles:
            device, signed = bundle["device"], bundle["signed_prekey"]
            one_time = bundle["one_time_prekey"]
            body.append(
                {
                    "device_id": str(device.pk),
                    "identity_key": _b64(device.identity_key),
                    "signed_prekey": {
                        "id": signed.key_id,
                        "public_key": _b64(signed.public_key),
                        "signature": _b64(signed.signature),
                    },
                    "one_time_prekey": None
                    if one_time is None
                    else {"id": one_time[0], "public_key": _b64(one_time[1])},
                }
            )
        return Response(body)
