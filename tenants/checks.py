"""Tenancy checks."""


def run_startup_checks() -> None:
    """Refuse to serve on an unsafe database role (filled in below)."""
