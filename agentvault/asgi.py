"""ASGI entry point for daphne: checks the database role, then serves.

Tests build the same application with ``agentvault.routing.build_application``
(this module queries the database at import, which tests must not do).
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentvault.settings")
django.setup()

from agentvault.routing import build_application  # noqa: E402
from tenants.checks import run_startup_checks  # noqa: E402

run_startup_checks()
application = build_application()
