"""Relay and REST clients over real sockets, for the multi-worker tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from enrollment.models import Device
from messaging.tests.helpers import envelope
from tests.support import device_token

ORIGIN = "http://127.0.0.1"


async def open_relay(
    url: str, device: Device, **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect to a worker's relay as ``device``; return the socket and hello."""
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {device_token(device)}"},
        origin=ORIGIN,  # type: ignore[arg-type]
        compression=None,
        open_timeout=10,
        **kwargs,
    )
    # A server that accepts and then never greets fails here, not later.
    hello = await recv_json(ws, timeout=10)
    assert hello["type"] == "hello", hello
    return ws, hello


async def recv_json(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    """Receive one JSON frame."""
    import asyncio

    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def close_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Read until the server closes; return the close code it sent."""
    import asyncio

    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        return None


def rest(base: str, device: Device) -> httpx.AsyncClient:
    """Return an HTTP client for a worker, authenticated as ``device``."""
    return httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {device_token(device)}"},
        timeout=30,
    )


def send_frame(room_id: Any, devices: list[Device], cid: str | None = None) -> str:
    """Return a ``send`` frame with one envelope per device."""
    return json.dumps(
        {
            "type": "send",
            "room_id": str(room_id),
            "client_message_id": cid or uuid.uuid4().hex,
            "envelopes": [envelope(device) for device in devices],
        }
    )
