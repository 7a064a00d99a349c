"""App configuration of the observability package."""

from __future__ import annotations

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    """Register the request-log signal receivers and start tracing if asked."""

    name = "agentvault.observability"
    label = "observability"

    def ready(self) -> None:
        """Connect receivers; configure OpenTelemetry before middleware loads."""
        from agentvault.observability import middleware  # noqa: F401  (receivers)
        from agentvault.observability.tracing import configure_tracing

        configure_tracing()
