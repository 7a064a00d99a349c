"""URL routes of the HTTP API and the tenant console."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agentvault.observability import views as observability

urlpatterns = [
    # Also answered by ProbeMiddleware before the rest of the stack runs.
    path("healthz", observability.healthz, name="healthz"),
    path("readyz", observability.readyz, name="readyz"),
    path("metrics", observability.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/", include("enrollment.urls")),
    path("api/v1/", include("messaging.urls")),
]

handler404 = "agentvault.errors.handler404"
handler500 = "agentvault.errors.handler500"
