"""Per-device send rate, shared by every worker, on the ``limits`` library.

A device may send ``burst`` messages in any window of ``burst / rate``
seconds (whole seconds, at least one), counted with the library's sliding
window counter. With ``REDIS_URL`` the counters live in Redis, so the
budget is the device's across every worker and both transports; without it
(one worker only) they live in the process. When Redis cannot be reached
the check lets the send through and logs it: the queue cap still bounds what
a sender can pile up.

The REST views count through the library's synchronous storage and the
relay through its asyncio storage (one per event loop, since asyncio Redis
connections belong to the loop that opened them); both use the same keys.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
import weakref
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import (
    SlidingWindowCounterRateLimiter as AsyncSlidingWindowCounterRateLimiter,
)
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

logger = logging.getLogger(__name__)

KEY_PREFIX = "av-rate"


def _item(rate: float, burst: int) -> RateLimitItem:
    """Return ``burst`` per ``burst / rate`` seconds (whole, at least 1)."""
    window = max(1, math.ceil(burst / rate))
    return RateLimitItemPerSecond(max(burst, math.ceil(rate * window)), window)


def _redis_url() -> str:
    from django.conf import settings

    return str(getattr(settings, "REDIS_URL", "") or "")


_lock = threading.Lock()
_sync: dict[str, SlidingWindowCounterRateLimiter] = {}


def _limiter() -> SlidingWindowCounterRateLimiter:
    url = _redis_url()
    with _lock:
        limiter = _sync.get(url)
        if limiter is None:
            storage = (
                RedisStorage(url, key_prefix=KEY_PREFIX) if url else MemoryStorage()
            )
            limiter = _sync[url] = SlidingWindowCounterRateLimiter(storage)
    return limiter


_async: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, AsyncSlidingWindowCounterRateLimiter]
] = weakref.WeakKeyDictionary()


def _alimiter() -> AsyncSlidingWindowCounterRateLimiter:
    url = _redis_url()
    per_loop = _async.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get(url)
    if limiter is None:
        storage: Any = (
            AsyncRedisStorage(
                f"async+{url}", implementation="redispy", key_prefix=KEY_PREFIX
            )
            if url
            else _shared_async_memory()
        )
        limiter = per_loop[url] = AsyncSlidingWindowCounterRateLimiter(storage)
    return limiter


_async_memory: AsyncMemoryStorage | None = None


def _shared_async_memory() -> AsyncMemoryStorage:
    # One worker without Redis: every loop of the process counts together.
    global _async_memory
    if _async_memory is None:
        _async_memory = AsyncMemoryStorage()
    return _async_memory


def take(scope: str, key: uuid.UUID | str, *, rate: float, burst: int) -> float:
    """Count one event for ``key``; return 0 when allowed, else seconds to wait."""
    item = _item(rate, burst)
    limiter = _limiter()
    try:
        if limiter.hit(item, scope, str(key)):
            return 0.0
        reset_at = limiter.get_window_stats(item, scope, str(key)).reset_time
    except Exception:
        logger.warning("Send rate check unavailable for %s", key, exc_info=True)
        return 0.0
    return max(reset_at - time.time(), 0.001)


async def atake(scope: str, key: uuid.UUID | str, *, rate: float, burst: int) -> float:
    """``take`` for the event loop: the same counters, without a thread."""
    item = _item(rate, burst)
    limiter = _alimiter()
    try:
        if await limiter.hit(item, scope, str(key)):
            return 0.0
        stats = await limiter.get_window_stats(item, scope, str(key))
    except Exception:
        logger.warning("Send rate check unavailable for %s", key, exc_info=True)
        return 0.0
    return max(stats.reset_time - time.time(), 0.001)


def reset() -> None:
    """Forget the in-process counters (tests)."""
    global _async_memory
    with _lock:
        for limiter in _sync.values():
            if isinstance(limiter.storage, MemoryStorage):
                limiter.storage.reset()
        _sync.clear()
    _async_memory = None
