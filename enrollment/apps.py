"""App configuration for enrollment."""

from django.apps import AppConfig


class EnrollmentConfig(AppConfig):
    """Devices and how they join, prove themselves and leave."""

    name = "enrollment"
    default_auto_field = "django.db.models.BigAutoField"
