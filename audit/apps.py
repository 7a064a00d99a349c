"""App configuration for audit."""

from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The tamper-evident audit trail."""

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"
