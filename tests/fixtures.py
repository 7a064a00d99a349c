"""Pytest fixtures shared across apps: two tenants in every base case."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.support import TenantWorld, make_tenant_world


@pytest.fixture
def tenant_a(db: None) -> TenantWorld:
    """Return tenant A with one member of each role."""
    return make_tenant_world("alpha")


@pytest.fixture
def tenant_b(db: None) -> TenantWorld:
    """Return tenant B, the other tenant every permission test also tries."""
    return make_tenant_world("bravo")


@pytest.fixture
def api() -> APIClient:
    """Return a DRF test client."""
    return APIClient()
