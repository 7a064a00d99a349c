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

A relay socket draws its device's budget ``ALLOWANCE`` sends at a time
(``Allowance``), so a steady sender costs one Redis call per eight sends
instead of one each. The price: a socket may hold up to seven sends drawn
in an earlier window, and what a closing socket has not used is lost to
the device until its window passes; near the limit it draws one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
import weakref

from limits import RateLimitItem, RateLimitItemPerSecond
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


def _alimiter(url: str) -> AsyncSlidingWindowCounterRateLimiter:
    per_loop = _async.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get(url)
    if limiter is None:
        storage = AsyncRedisStorage(
            f"async+{url}", implementation="redispy", key_prefix=KEY_PREFIX
        )
        limiter = per_loop[url] = AsyncSlidingWindowCounterRateLimiter(storage)
    return limiter


async def _ahit(item: RateLimitItem, scope: str, key: str, *, cost: int = 1) -> bool:
    url = _redis_url()
    if not url:
        # In-process counters (one worker): shared with the REST path.
        return _limiter().hit(item, scope, key, cost=cost)
    return await _alimiter(url).hit(item, scope, key, cost=cost)


async def _areset_time(item: RateLimitItem, scope: str, key: str) -> float:
    url = _redis_url()
    if not url:
        return _limiter().get_window_stats(item, scope, key).reset_time
    return (await _alimiter(url).get_window_stats(item, scope, key)).reset_time


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
    try:
        if await _ahit(item, scope, str(key)):
            return 0.0
        reset_at = await _areset_time(item, scope, str(key))
    except Exception:
        logger.warning("Send rate check unavailable for %s", key, exc_info=True)
        return 0.0
    return max(reset_at - time.time(), 0.001)


ALLOWANCE = 8


class Allowance:
    """One socket's sends drawn ahead from its device's shared budget."""

    def __init__(self, scope: str, key: uuid.UUID | str) -> None:
        self.scope = scope
        self.key = str(key)
        self.left = 0

    async def take(self, *, rate: float, burst: int) -> float:
        """Use one send; return 0 when allowed, else seconds to wait."""
        if self.left > 0:
            self.left -= 1
            return 0.0
        draw = min(ALLOWANCE, burst)
        if draw > 1:
            try:
                if await _ahit(_item(rate, burst), self.scope, self.key, cost=draw):
                    self.left = draw - 1
                    return 0.0
            except Exception:
                logger.warning(
                    "Send rate check unavailable for %s", self.key, exc_info=True
                )
                return 0.0
        return await atake(self.scope, self.key, rate=rate, burst=burst)


def reset() -> None:
    """Forget the in-process counters (tests)."""
    with _lock:
        for limiter in _sync.values():
            if isinstance(limiter.storage, MemoryStorage):
                limiter.storage.reset()
        _sync.clear()
