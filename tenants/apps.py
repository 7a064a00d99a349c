"""App configuration for tenants."""

from django.apps import AppConfig


class TenantsConfig(AppConfig):
    """Register the tenancy checks and console login auditing."""

    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tenants import checks, signals  # noqa: F401  (registration)
