"""One error envelope for every API failure.

Every failure leaves the API as ``{"code", "message", "fields"}``: ``code`` is a
stable snake_case word clients can branch on, ``message`` is for people, and
``fields`` carries structured details (per-field validation errors, the
missing devices of a send). ``ApiError`` subclasses are raised anywhere; the
DRF exception handler below renders them and maps DRF's and Django's own
exceptions onto the same envelope, adding ``Retry-After`` and
``WWW-Authenticate`` where they apply.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from django.utils.translation import gettext_lazy as _
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An API failure with a stable code, an HTTP status and a message."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    template: ClassVar[Any] = _("The request failed.")

    def __init__(
        self,
        *,
        code: str | None = None,
        fields: dict[str, Any] | None = None,
        retry_after: float | None = None,
        **params: Any,
    ) -> None:
        self.error_code = code or self.code
        self.fields = fields or {}
        self.retry_after = retry_after
        self.params = params
        super().__init__(self.error_code)

    @property
    def message(self) -> str:
        """Return the rendered, translated message."""
        return str(self.template).format(**self.params)

    def headers(self) -> dict[str, str]:
        """Return extra response headers."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class BadRequestError(ApiError):
    """The request is malformed or fails validation."""

    code = "invalid_request"
    status = 400
    template = _("The request is not valid.")


class AuthenticationError(ApiError):
    """The caller is not authenticated (or its token was refused)."""

    code = "not_authenticated"
    status = 401
    template = _("Authentication credentials were missing or not accepted.")

    def headers(self) -> dict[str, str]:
        """Return the ``WWW-Authenticate`` challenge with the reason."""
        error = "invalid_token" if self.error_code != "not_authenticated" else None
        value = 'Bearer realm="agentvault"'
        if error:
            value += f', error="{error}"'
        return {**super().headers(), "WWW-Authenticate": value}


class ForbiddenError(ApiError):
    """The caller may not do this."""

    code = "forbidden"
    status = 403
    template = _("You do not have permission to perform this action.")


class NotFoundError(ApiError):
    """The object does not exist, or belongs to someone the caller cannot see."""

    code = "not_found"
    status = 404
    template = _("Not found.")


class ConflictError(ApiError):
    """The request conflicts with the current state."""

    code = "conflict"
    status = 409
    template = _("The request conflicts with the current state.")


class MethodNotAllowedError(ApiError):
    """The HTTP method is not served at this path."""

    code = "method_not_allowed"
    status = 405
    template = _("This method is not allowed here.")


class UnsupportedMediaTypeError(ApiError):
    """The request body is not JSON."""

    code = "unsupported_media_type"
    status = 415
    template = _("Send JSON with Content-Type: application/json.")


class NotAcceptableError(ApiError):
    """The client accepts no representation the API offers."""

    code = "not_acceptable"
    status = 406
    template = _("The API answers in JSON only.")


class RateLimitedError(ApiError):
    """Too many requests."""

    code = "rate_limited"
    status = 429
    template = _("Too many requests; try again later.")


_AUTH_MESSAGES = {
    "not_authenticated": _("Authentication credentials were not provided."),
    "invalid_token": _("The bearer token is not valid."),
    "token_expired": _("The bearer token has expired."),
    "device_revoked": _("This device has been revoked."),
    "unknown_subject": _("The token's subject is not a member of any tenant."),
}


def _render(error: ApiError, *, status: int | None = None) -> Response:
    message = error.message
    if isinstance(error, AuthenticationError):
        message = str(_AUTH_MESSAGES.get(error.error_code, message))
    body = {"code": error.error_code, "message": message, "fields": error.fields}
    return Response(body, status=status or error.status, headers=error.headers())


def _from_drf(exc: drf.APIException) -> ApiError:
    if isinstance(exc, drf.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        return BadRequestError(fields=drf_to_plain(fields))
    if isinstance(exc, drf.ParseError):
        return BadRequestError(code="malformed_request")
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return AuthenticationError()
    if isinstance(exc, drf.PermissionDenied):
        return ForbiddenError()
    if isinstance(exc, drf.NotFound):
        return NotFoundError()
    if isinstance(exc, drf.Throttled):
        return RateLimitedError(retry_after=getattr(exc, "wait", None))
    if isinstance(exc, drf.MethodNotAllowed):
        return MethodNotAllowedError()
    if isinstance(exc, drf.UnsupportedMediaType):
        return UnsupportedMediaTypeError()
    if isinstance(exc, drf.NotAcceptable):
        return NotAcceptableError()
    return ApiError(code="error")


def drf_to_plain(value: Any) -> Any:
    """Turn DRF ``ErrorDetail`` trees into plain lists and dicts of strings."""
    if isinstance(value, dict):
        return {key: drf_to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [drf_to_plain(item) for item in value]
    return str(value)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render any exception raised in a DRF view as the error envelope."""
    if isinstance(exc, ApiError):
        return _render(exc)
    if isinstance(exc, Ratelimited):
        return _render(RateLimitedError(retry_after=getattr(exc, "retry_after", 60)))
    if isinstance(exc, Http404):
        return _render(NotFoundError())
    if isinstance(exc, DjangoPermissionDenied):
        return _render(ForbiddenError())
    if isinstance(exc, drf.APIException):
        error = _from_drf(exc)
        status = None if type(error) is not ApiError else exc.status_code
        return _render(error, status=status)
    return None


def json_error(
    request: HttpRequest, code: str, message: str, status: int
) -> JsonResponse:
    """Return the error envelope outside DRF (404 and 500 pages of the API)."""
    return JsonResponse({"code": code, "message": message, "fields": {}}, status=status)


def handler400(request: HttpRequest, exception: Exception | None = None) -> Any:
    """Answer a request Django refused (too large, malformed) with the envelope."""
    if request.path.startswith("/api/"):
        if isinstance(exception, RequestDataTooBig):
            message = "The request is larger than the server accepts."
            return json_error(request, "payload_too_large", message, 413)
        return json_error(request, "bad_request", "The request was refused.", 400)
    from django.views.defaults import bad_request

    return bad_request(request, exception or Exception())


def handler404(request: HttpRequest, exception: Exception | None = None) -> Any:
    """Answer unknown API paths with the envelope; the console keeps its page."""
    if request.path.startswith("/api/"):
        return json_error(request, "not_found", "Not found.", 404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> Any:
    """Answer server errors on the API with the envelope and no details."""
    if request.path.startswith("/api/"):
        return json_error(request, "server_error", "Internal server error.", 500)
    from django.views.defaults import server_error

    return server_error(request)
