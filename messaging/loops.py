"""What the relay keeps per event loop, and its background tasks.

The relay's shared parts (the hub, the send batcher, the database pool) are
one per event loop: one per worker process in production, one per test in
the test suite, whose loops come and go.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``T`` per event loop, made on first use and gone with the loop."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._make = make
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """Return the running loop's ``T``."""
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None:
            found = self._by_loop[loop] = self._make(loop)
        return found


# Tasks nobody awaits (flushes, publishes, closes), kept until done so the
# loop's weak references do not drop them half-way.
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coro`` in the background on the running loop."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
