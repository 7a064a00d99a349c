"""URL routes of the HTTP API and the tenant console."""

from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
]

handler404 = "agentvault.errors.handler404"
handler500 = "agentvault.errors.handler500"
