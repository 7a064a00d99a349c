"""App configuration for messaging."""

from django.apps import AppConfig


class MessagingConfig(AppConfig):
    """Rooms and the ciphertext relay."""

    name = "messaging"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the receivers of enrollment's device signals."""
        from enrollment.signals import device_approved, device_revoked
        from messaging import receivers

        device_revoked.connect(
            receivers.on_device_revoked, dispatch_uid="messaging.device_revoked"
        )
        device_approved.connect(
            receivers.on_device_approved, dispatch_uid="messaging.device_approved"
        )
