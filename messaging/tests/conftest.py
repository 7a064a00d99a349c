"""Fixtures of the messaging tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from messaging import store


@pytest.fixture
async def relay_pool_closed() -> AsyncIterator[None]:
    """Close the relay's connection pool of the test's event loop at the end.

    In-process relay sockets open an asyncio pool per event loop; each test
    has its own loop, so each closes its pool before the loop goes away.
    """
    yield
    await store.close_relay_pool()
