"""Per-device send rate: a token bucket shared by every worker.

The bucket is kept as one "theoretical arrival time" per key (the generic
cell rate algorithm): each send moves it forward by ``1 / rate``; a send is
refused when that would put it more than ``burst / rate`` ahead of now. With
the Redis cache the check-and-move is one Lua call, atomic across workers;
with the in-process cache (one worker only) a lock does the same. When
Redis cannot be reached the check lets the send through (and logs it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import weakref
from typing import Any

from django.core.cache import cache

logger = logging.getLogger(__name__)

_SCRIPT = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - tolerance
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(tolerance * 1000) + 1000)
return '0'
"""

_local_lock = threading.Lock()
_local: dict[str, float] = {}


def _redis_client() -> Any | None:
    backend = getattr(cache, "_cache", None)
    get_client = getattr(backend, "get_client", None)
    if get_client is None or "Redis" not in type(cache).__name__:
        return None
    return get_client(None, write=True)


def take(scope: str, key: uuid.UUID | str, *, rate: float, burst: int) -> float:
    """Take one token for ``key``; return 0 when allowed, else seconds to wait."""
    interval = 1.0 / rate
    tolerance = interval * burst
    name = f"rl.{scope}.{key}"
    now = time.time()

    client = _redis_client()
    if client is not None:
        try:
            wait = client.eval(
                _SCRIPT, 1, cache.make_key(name), now, interval, tolerance
            )
        except Exception:
            # Fail open: an unreachable Redis must not stop durable sends;
            # the queue cap still bounds what a sender can pile up.
            logger.warning("Send rate check unavailable for %s", key, exc_info=True)
            return 0.0
        return max(0.0, float(wait))

    with _local_lock:
        tat = max(_local.get(name, now), now)
        new_tat = tat + interval
        wait = new_tat - now - tolerance
        if wait > 0:
            return wait
        _local[name] = new_tat
        if len(_local) > 100_000:
            _forget_idle(now)
        return 0.0


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)


def _async_redis_client() -> Any | None:
    """The running loop's asyncio Redis client, when the cache is Redis."""
    if _redis_client() is None:
        return None
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        from django.conf import settings
        from redis.asyncio import Redis

        client = _async_clients[loop] = Redis.from_url(settings.REDIS_URL)
    return client


async def atake(scope: str, key: uuid.UUID | str, *, rate: float, burst: int) -> float:
    """``take`` for the event loop: the same bucket, without a thread."""
    client = _async_redis_client()
    if client is None:
        return take(scope, key, rate=rate, burst=burst)
    interval = 1.0 / rate
    tolerance = interval * burst
    name = cache.make_key(f"rl.{scope}.{key}")
    try:
        wait = await client.eval(_SCRIPT, 1, name, time.time(), interval, tolerance)
    except Exception:
        logger.warning("Send rate check unavailable for %s", key, exc_info=True)
        return 0.0
    return max(0.0, float(wait))


def _forget_idle(now: float) -> None:
    for name in [name for name, tat in _local.items() if tat < now]:
        del _local[name]


def reset() -> None:
    """Forget the in-process buckets (tests)."""
    with _local_lock:
        _local.clear()
