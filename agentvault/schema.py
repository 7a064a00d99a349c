"""The OpenAPI description of the API: error envelope, bearer auth, error codes.

Views declare their success bodies and the failures only they can give
(``errors(404, 409)``). ``ApiAutoSchema`` adds the failures every view of a
kind can give, so no operation leaves one out:

- a view that reads a JSON body answers 400 (malformed or invalid), 413
  (over Django's upload limit, or the view's own) and 415 (not JSON);
- a view behind bearer authentication answers 401 (no or refused token),
  403 (a pending device, or not allowed) and 429 (the caller's address is
  blocked after repeated authentication failures).

Every failure has the same body, the envelope of ``agentvault.errors``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny


class ErrorSerializer(serializers.Serializer[Any]):
    """The error envelope every API failure answers with."""

    code = serializers.CharField(help_text="Stable snake_case error code.")
    message = serializers.CharField(help_text="Human-readable explanation.")
    # The envelope's key is ``fields``; DRF's metaclass moves declared fields
    # off the class, so this does not shadow ``Serializer.fields``.
    fields = serializers.DictField(  # type: ignore[assignment]
        help_text="Structured details: per-field errors, devices of a send."
    )


_DESCRIPTIONS = {
    400: "The request is malformed or fails validation.",
    401: "No bearer token, or the token was refused.",
    403: "The caller may not do this (a pending device, or not an admin).",
    404: "Not found, or not visible to the caller.",
    409: "The request conflicts with the current state.",
    410: "The request names devices that were revoked.",
    413: "The request or one of its parts is too large.",
    415: "The body is not JSON.",
    422: "A signature does not verify.",
    429: "Too many requests; Retry-After says when to try again.",
    507: "A recipient's queue is full.",
}


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Return the error responses of ``statuses`` for ``extend_schema``."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[status])
        for status in statuses
    }


class ApiAutoSchema(AutoSchema):
    """Add the failures every view of a kind can give to its responses."""

    def get_override_parameters(self) -> list[Any]:
        """Return the view's parameters plus the headers of the failures."""
        headers = [
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[429],
                description="Seconds to wait before trying again.",
            ),
            OpenApiParameter(
                "WWW-Authenticate",
                str,
                OpenApiParameter.HEADER,
                response=[401],
                description="The bearer challenge, with the refusal's reason.",
            ),
        ]
        return [*super().get_override_parameters(), *headers]

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        """Return the declared responses with the common failures added.

        ``extend_schema`` replaces ``get_response_serializers`` per view, so
        the failures go in one step later, where the bodies are built.
        """
        responses = super()._get_response_bodies(direction)
        common: list[int] = []
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer():
            common += [400, 413, 415]
        if self._is_authenticated():
            common += [401, 403, 429]

        build: Any = self._get_response_for_code  # untyped in drf-spectacular
        for status, response in errors(*common).items():
            if str(status) not in responses:
                responses[str(status)] = build(
                    response, str(status), direction=direction
                )
        return responses

    def _is_authenticated(self) -> bool:
        view = self.view
        if not view.get_authenticators():
            return False
        return not all(isinstance(p, AllowAny) for p in view.get_permissions())


# drf-spectacular's extension base registers subclasses in an untyped hook.
class BearerTokenScheme(  # type: ignore[no-untyped-call]
    OpenApiAuthenticationExtension
):
    """Describe ``BearerTokenAuthentication``: a JWT in the bearer header."""

    target_class = "agentvault.auth.drf.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        """Return the OpenAPI security scheme of device and member tokens."""
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
