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
K = TypeVar("K")
V = TypeVar("V")


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


class Gatherer(Generic[K, V]):
    """Items gathered per key and handled in groups, like a group commit.

    The items of a key added in one loop turn go together; while ``limit``
    groups of a key are being handled, the key's new items wait and go
    together in its next group. Keys do not wait for one another. ``handle``
    must answer every item of its group, also when it fails.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handle: Callable[[K, list[V]], Coroutine[Any, Any, None]],
        *,
        limit: int = 1,
    ) -> None:
        self._loop = loop
        self._handle = handle
        self._limit = limit
        self._waiting: dict[K, list[V]] = {}
        self._busy: dict[K, int] = {}
        self._scheduled = False

    def add(self, key: K, item: V) -> None:
        """Gather ``item``; it is handled at the end of this turn or later."""
        self._waiting.setdefault(key, []).append(item)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._waiting:
            self._scheduled = True
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        for key in list(self._waiting):
            if self._busy.get(key, 0) < self._limit:
                self._busy[key] = self._busy.get(key, 0) + 1
                spawn(self._run(key, self._waiting.pop(key)))

    async def _run(self, key: K, items: list[V]) -> None:
        try:
            await self._handle(key, items)
        finally:
            self._busy[key] -= 1
            if not self._busy[key]:
                del self._busy[key]
            self._schedule()


# Tasks nobody awaits (flushes, publishes, closes), kept until done so the
# loop's weak references do not drop them half-way.
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coro`` in the background on the running loop."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
