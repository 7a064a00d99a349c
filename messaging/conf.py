"""Messaging options: the ``MESSAGING`` settings dict over built-in defaults.

Read lazily through ``messaging_settings``, which reloads when a test changes
the setting, so no module reads settings at import time.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Send limits (DESIGN.md section 6).
    "MAX_CIPHERTEXT_BYTES": 96 * 1024,
    "MAX_REQUEST_BYTES": 256 * 1024,
    "QUEUE_CAP": 10_000,
    "SEND_RATE": 50.0,
    "SEND_BURST": 200,
    "MAX_CLIENT_MESSAGE_ID": 64,
    # Retention of unacknowledged deliveries, in days.
    "RETENTION_DAYS": 30,
    # Inbox paging.
    "INBOX_DEFAULT_LIMIT": 100,
    "INBOX_MAX_LIMIT": 500,
    # Relay socket behaviour.
    "MAX_IN_FLIGHT": 256,
    "MAX_IN_FLIGHT_BYTES": 8 * 1024 * 1024,
    "ACK_TIMEOUT": 30.0,
    "SWEEP_INTERVAL": 15.0,
    "STATUS_INTERVAL": 15.0,
    "FRAME_RATE": 100.0,
    "FRAME_BURST": 400,
}


class MessagingSettings:
    """Attribute access to the merged options, rebuilt on ``setting_changed``."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    def _merged(self) -> dict[str, Any]:
        if self._cache is None:
            self._cache = {**DEFAULTS, **getattr(settings, "MESSAGING", {})}
        return self._cache

    def __getattr__(self, name: str) -> Any:
        try:
            return self._merged()[name]
        except KeyError:
            raise AttributeError(name) from None

    def reload(self) -> None:
        """Forget the merged options; the next read rebuilds them."""
        self._cache = None


messaging_settings = MessagingSettings()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "MESSAGING":
        messaging_settings.reload()
