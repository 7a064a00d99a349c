"""Fixtures of the enrollment tests: a clean rate-limit cache per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    """Start and end every test with empty rate-limit counters."""
    cache.clear()
    yield
    cache.clear()
