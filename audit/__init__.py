"""Append-only, hash-chained audit trail of administrative and security acts."""

from __future__ import annotations

from typing import Any


def record(action: str, **kwargs: Any) -> Any:
    """Append one audit event in the current tenant scope (see ``audit.actions``)."""
    from audit.actions import do_record_event

    return do_record_event(action, **kwargs)
