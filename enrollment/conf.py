"""Enrollment options, read from ``settings.ENROLLMENT`` at call time."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    "INVITE_LIFETIME": 24 * 3600,
    "INVITE_MAX_LIFETIME": 7 * 24 * 3600,
    "ENROLL_RATE": "5/10m",
    "CHALLENGE_LIFETIME": 60,
    "AUTH_RATE": "30/m",
    "PREKEYS_PER_UPLOAD": 100,
    "PREKEYS_STORED": 1000,
    "BUNDLE_RATE": "20/m",
}


def option(name: str) -> Any:
    """Return enrollment option ``name``, falling back to its default.

    Read on every call, so ``override_settings`` and reloads apply at once.
    """
    configured = getattr(settings, "ENROLLMENT", {}) or {}
    if name in configured:
        return configured[name]
    return DEFAULTS[name]
