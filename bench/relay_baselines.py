"""Baselines for bench/relay.py: a bare Channels relay and a raw websockets relay.

- ``bench.relay_baselines:bare_application`` (served by daphne): the same
  transport as the product (daphne, Channels, the Redis channel layer at
  ``BENCH_REDIS_URL``) with none of its work: no auth, no database. The
  receiver of pair N joins group ``pN``; each binary frame of the sender is
  ``group_send`` to it and written out by the receiver's consumer.
- ``python bench/relay_baselines.py raw PORT``: a plain ``websockets`` server
  that forwards each sender frame to its pair's receiver in-process.

Both use ``/relay?role=recv|send&pair=N``.
"""

# ruff: noqa: T201

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any
from urllib.parse import parse_qs


def _query(scope_query: bytes | str) -> tuple[str, str]:
    raw = scope_query.decode() if isinstance(scope_query, bytes) else scope_query
    query = parse_qs(raw)
    return query.get("role", ["send"])[0], query.get("pair", ["0"])[0]


def _bare_application() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        settings.configure(
            DEBUG=False,
            SECRET_KEY="bench-only",  # noqa: S106 (no sessions or signing here)
            INSTALLED_APPS=["channels"],
            ALLOWED_HOSTS=["*"],
            CHANNEL_LAYERS={
                "default": {
                    "BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {
                        # The product's host options (agentvault/settings.py).
                        "hosts": [
                            {
                                "address": url,
                                "socket_timeout": 60.0,
                                "max_connections": 1000,
                            }
                        ],
                        "capacity": 200,
                        "prefix": "avbench",
                    },
                }
            },
        )
        django.setup()

    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import URLRouter
    from django.urls import path

    class BareRelayConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
        async def connect(self) -> None:
            self.role, pair = _query(self.scope["query_string"])
            self.group = f"p{pair}"
            if self.role == "recv":
                await self.channel_layer.group_add(self.group, self.channel_name)
            await self.accept()

        async def receive(
            self, text_data: str | None = None, bytes_data: bytes | None = None
        ) -> None:
            await self.channel_layer.group_send(
                self.group, {"type": "relay.msg", "data": bytes_data or b""}
            )

        async def relay_msg(self, event: dict[str, Any]) -> None:
            await self.send(bytes_data=event["data"])

        async def disconnect(self, code: int) -> None:
            if self.role == "recv":
                await self.channel_layer.group_discard(self.group, self.channel_name)

    return URLRouter([path("relay", BareRelayConsumer.as_asgi())])


def __getattr__(name: str) -> Any:
    if name == "bare_application":
        return _bare_application()
    raise AttributeError(name)


async def serve_raw(port: int) -> None:
    """Serve the raw relay until cancelled."""
    from websockets.asyncio.server import ServerConnection, serve

    receivers: dict[str, ServerConnection] = {}

    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        role, pair = _query(connection.request.path.partition("?")[2])
        if role == "recv":
            receivers[pair] = connection
            await connection.wait_closed()
            receivers.pop(pair, None)
            return
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in connection:
                target = receivers.get(pair)
                if target is not None:
                    await target.send(frame)
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await asyncio.Future()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "raw":
        asyncio.run(serve_raw(int(sys.argv[2])))
    else:
        print("usage: python bench/relay_baselines.py raw PORT", file=sys.stderr)
        sys.exit(2)
