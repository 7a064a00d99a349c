"""In-process relay clients for consumer tests: the full ASGI stack."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from channels.testing import WebsocketCommunicator

from enrollment.models import Device
from tests.support import device_token

ORIGIN = (b"origin", b"http://localhost")

P = ParamSpec("P")
R = TypeVar("R")


def db(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run ``fn`` on the database thread, as consumers do (typed wrapper)."""
    from channels.db import database_sync_to_async

    wrapped: Callable[P, Awaitable[R]] = database_sync_to_async(fn)
    return wrapped


@functools.cache
def application() -> Any:
    """Return the project's ASGI application (router, origin check, consumer)."""
    from agentvault.routing import build_application

    return build_application()


def communicator(
    token: str | None = None,
    *,
    via: str = "header",
    subprotocols: list[str] | None = None,
) -> WebsocketCommunicator:
    """Return a communicator to ``/ws/v1/relay`` carrying ``token`` as told."""
    path = "/ws/v1/relay"
    headers = [ORIGIN]
    if token and via == "header":
        headers.append((b"authorization", f"Bearer {token}".encode()))
    elif token and via == "query":
        path += f"?token={token}"
    elif token and via == "subprotocol":
        subprotocols = [*(subprotocols or []), f"bearer.{token}"]
    return WebsocketCommunicator(
        application(), path, headers=headers, subprotocols=subprotocols
    )


async def open_socket(
    device: Device, **kwargs: Any
) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    """Connect as ``device`` and return the communicator and its ``hello``."""
    comm = communicator(device_token(device), **kwargs)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    hello = await comm.receive_json_from(timeout=10)
    assert hello["type"] == "hello", hello
    return comm, hello


async def frames_until(
    comm: WebsocketCommunicator, kind: str, *, timeout: float = 10
) -> list[dict[str, Any]]:
    """Return frames received up to and including the first of type ``kind``."""
    seen = []
    while True:
        frame = await comm.receive_json_from(timeout=timeout)
        seen.append(frame)
        if frame["type"] == kind:
            return seen


async def close_code(comm: WebsocketCommunicator, *, timeout: float = 10) -> int:
    """Return the close code the server sent, skipping other frames."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        output = await comm.receive_output(timeout=max(left, 0.01))
        if output["type"] == "websocket.close":
            return int(output.get("code", 1000))


async def send_json(comm: WebsocketCommunicator, **frame: Any) -> None:
    """Send one JSON frame."""
    await comm.send_to(text_data=json.dumps(frame))
