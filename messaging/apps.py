"""App configuration for messaging."""

from django.apps import AppConfig


class MessagingConfig(AppConfig):
    """Rooms and the ciphertext relay."""

    name = "messaging"
    default_auto_field = "django.db.models.BigAutoField"
