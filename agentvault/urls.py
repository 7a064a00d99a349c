"""URL routes of the HTTP API and the tenant console."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import include, path
from django_ratelimit.decorators import ratelimit
from drf_spectacular.views import SpectacularAPIView

from agentvault.context import request_client_ip
from agentvault.observability import views as observability


def _client_ip(group: str, request: HttpRequest) -> str:
    return request_client_ip(request) or "unknown"


# Console sign-in attempts: per address and per account name, so a password
# guesser is slowed whether it rotates accounts or addresses. A refusal is a
# 403 page; the failed attempts before it are in the tenant's audit trail.
console_login: Any = ratelimit(
    key="post:username", rate="10/10m", method="POST", block=True
)(ratelimit(key=_client_ip, rate="20/10m", method="POST", block=True)(admin.site.login))

urlpatterns = [
    # Also answered by ProbeMiddleware before the rest of the stack runs.
    path("healthz", observability.healthz, name="healthz"),
    path("readyz", observability.readyz, name="readyz"),
    path("metrics", observability.metrics_view, name="metrics"),
    path("admin/login/", console_login, name="console-login"),
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/", include("enrollment.urls")),
    path("api/v1/", include("messaging.urls")),
]

handler400 = "agentvault.errors.handler400"
handler404 = "agentvault.errors.handler404"
handler500 = "agentvault.errors.handler500"
