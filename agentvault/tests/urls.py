"""A URLconf with small views that raise each kind of failure."""

from __future__ import annotations

from typing import Any

from django.urls import include, path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentvault.auth.drf import IsTenantAdmin
from agentvault.auth.principal import Principal
from agentvault.errors import ConflictError


class _Body(serializers.Serializer):  # type: ignore[type-arg]
    count = serializers.IntegerField(min_value=1)


class EchoView(APIView):
    """Validate a body; POST only."""

    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        body = _Body(data=request.data)
        body.is_valid(raise_exception=True)
        return Response({"count": body.validated_data["count"]})


class WhoAmIView(APIView):
    """Return the caller's member id (any active device)."""

    def get(self, request: Request) -> Response:
        principal: Principal = request.user  # type: ignore[assignment]
        return Response({"member_id": str(principal.member_id)})


class AdminOnlyView(APIView):
    """Only tenant admins get through."""

    permission_classes = [IsTenantAdmin]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class ConflictView(APIView):
    """Raise a domain error with fields."""

    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise ConflictError(fields={"missing": ["a"]})


class BoomView(APIView):
    """Fail with an unexpected exception."""

    permission_classes = [AllowAny]

    def get(self, request: Request) -> Any:
        raise RuntimeError("boom")


urlpatterns = [
    path("api/v1/test/echo", EchoView.as_view()),
    path("api/v1/test/whoami", WhoAmIView.as_view()),
    path("api/v1/test/admin", AdminOnlyView.as_view()),
    path("api/v1/test/conflict", ConflictView.as_view()),
    path("api/v1/test/boom", BoomView.as_view()),
    path("", include("agentvault.urls")),
]

handler400 = "agentvault.errors.handler400"
handler404 = "agentvault.errors.handler404"
handler500 = "agentvault.errors.handler500"
