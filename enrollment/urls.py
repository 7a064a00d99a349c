"""API routes of the enrollment app."""

from django.urls import path  # noqa: F401

urlpatterns: list[object] = []
