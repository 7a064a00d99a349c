"""DRF authentication and permission classes over the tenant middleware."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from agentvault.auth.principal import Principal
from agentvault.errors import AuthenticationError


class BearerTokenAuthentication(BaseAuthentication):
    """Accept the principal the tenant middleware resolved from the token."""

    def authenticate(self, request: Request) -> tuple[Principal, Any] | None:
        """Return (principal, token), raise on a refused token, None without one."""
        django_request = request._request
        error = getattr(django_request, "auth_error", None)
        if error is not None:
            raise AuthenticationError(code=error.code)
        principal: Principal | None = getattr(django_request, "principal", None)
        if principal is None:
            return None
        return principal, principal.token

    def authenticate_header(self, request: Request) -> str:
        """Return the ``WWW-Authenticate`` value of a 401 answer."""
        return 'Bearer realm="agentvault"'


def _principal(request: Request) -> Principal | None:
    user = getattr(request, "user", None)
    return user if isinstance(user, Principal) else None


class IsActiveDevice(BasePermission):
    """Allow approved devices (and OIDC members, which have no device)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Return whether the caller is authenticated and not pending."""
        principal = _principal(request)
        if principal is None:
            return False
        return principal.device is None or principal.device_status == "active"


class IsTenantAdmin(IsActiveDevice):
    """Allow owner admins and tenant admins."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Return whether the caller administers its tenant."""
        principal = _principal(request)
        return super().has_permission(request, view) and bool(
            principal and principal.is_admin
        )


class IsOwnerAdmin(IsActiveDevice):
    """Allow owner admins only."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Return whether the caller is an owner admin."""
        principal = _principal(request)
        return super().has_permission(request, view) and bool(
            principal and principal.role == "owner_admin"
        )
