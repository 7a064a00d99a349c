"""The middleware that puts each request inside its tenant's scope.

It resolves who is calling (a bearer token, or a console session), opens the
request transaction and sets ``app.current_tenant_id`` as its first statement,
so every query of the view, the serializers and later middleware runs under
row-level security for that tenant. Requests with no tenant still run in a
transaction, where tenant tables show no rows at all.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from django.db import transaction
from django.http import HttpRequest, HttpResponse

from agentvault import abuse
from agentvault.auth.principal import Principal, resolve_principal, tenant_of
from agentvault.auth.tokens import TokenError, VerifiedToken, verify_token
from agentvault.context import request_client_ip
from agentvault.observability.metrics import AUTH_FAILURES
from tenants.scope import tenant_scope

logger = logging.getLogger(__name__)


class TenantRequest(HttpRequest):
    """An ``HttpRequest`` with the attributes this middleware attaches."""

    tenant_id: uuid.UUID | None
    principal: Principal | None
    auth_error: TokenError | None


def bearer_token(request: HttpRequest) -> str | None:
    """Return the bearer token of the ``Authorization`` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TenantScopeMiddleware:
    """Authenticate the caller and run the request in its tenant scope."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request = _attach(request)
        token = bearer_token(request)

        # An address past its failure threshold is refused before any token
        # work (``agentvault.abuse``).
        if token is not None:
            refused = abuse.blocked_response(request)
            if refused is not None:
                return refused

        # Identify the tenant: a token first, else a console session.
        verified = None
        if token is not None:
            try:
                verified = verify_token(token)
                request.tenant_id = tenant_of(verified)
            except TokenError as exc:
                request.auth_error = exc
                _note_failure(request, exc, verified)
        elif request.user.is_authenticated:
            request.tenant_id = getattr(request.user, "tenant_id", None)

        if request.tenant_id is None:
            with transaction.atomic():
                return self._respond(request)

        with tenant_scope(request.tenant_id):
            if verified is not None:
                try:
                    request.principal = resolve_principal(verified, request.tenant_id)
                except TokenError as exc:
                    request.auth_error = exc
                    _note_failure(request, exc, verified)
            return self._respond(request)

    def _respond(self, request: TenantRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code >= 500:
            # The view failed after writing: keep none of it.
            transaction.set_rollback(True)
        return response


def _note_failure(
    request: TenantRequest, error: TokenError, verified: VerifiedToken | None
) -> None:
    """Count a refused token; name its device and tenant only if verified."""
    AUTH_FAILURES.labels(transport="http", reason=error.code).inc()
    device_id = None
    if verified is not None and verified.kind == "device":
        device_id = uuid.UUID(verified.subject)
    failure = abuse.AuthFailure(
        transport="http",
        reason=error.code,
        ip=request_client_ip(request),
        device_id=device_id,
        tenant_id=request.tenant_id if verified is not None else None,
    )
    abuse.do_note_auth_failure(failure)


def _attach(request: HttpRequest) -> TenantRequest:
    request.tenant_id = None  # type: ignore[attr-defined]
    request.principal = None  # type: ignore[attr-defined]
    request.auth_error = None  # type: ignore[attr-defined]
    return request  # type: ignore[return-value]
