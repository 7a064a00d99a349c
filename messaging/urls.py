"""API routes of the messaging app."""

from django.urls import path  # noqa: F401

urlpatterns: list[object] = []
