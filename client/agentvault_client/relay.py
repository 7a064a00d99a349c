"""Speak the relay's WebSocket protocol at ``/ws/v1/relay``.

The token goes in the ``Authorization`` header (never in the URL). Frames
are JSON text: the server sends ``hello``, ``envelope``, ``queue_empty``,
``sent``, ``devices_changed`` and ``error``; the client sends ``ack``,
``send`` and ``ping``. Close codes are listed in :data:`CLOSE_REASONS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agentvault_client.errors import (
    DeviceRevokedError,
    ProtocolError,
    RelayClosedError,
    TransportError,
    UnauthorizedError,
)

__all__ = [
    "CLOSE_REASONS",
    "RELAY_PATH",
    "RelayConnection",
    "RelayUnavailableError",
    "relay_url",
]

logger = logging.getLogger(__name__)

RELAY_PATH = "/ws/v1/relay"
#: Larger than the biggest envelope frame (96 KiB ciphertext in base64).
MAX_FRAME_BYTES = 1024 * 1024

CLOSE_REASONS = {
    4400: "malformed frame",
    4401: "not authenticated or token expired",
    4403: "device revoked",
    4408: "too slow to acknowledge",
    4409: "replaced by a newer connection of the same device",
    4413: "frame too large",
    4429: "rate limited",
    4503: "server unavailable, reconnect later",
}


class RelayUnavailableError(TransportError):
    """Raise when the server has no relay endpoint (handshake 404)."""

    code = "relay_unavailable"
    default_message = "The server does not offer the WebSocket relay."


def relay_url(base_url: str) -> str:
    """Return the ``ws(s)://`` URL of the relay for an ``http(s)://`` base URL."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + RELAY_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def closed_error(code: int | None) -> Exception:
    """Return the SDK error for a relay close code."""
    number = code or 1006
    reason = CLOSE_REASONS.get(number, "connection closed")
    if number == 4403:
        return DeviceRevokedError()
    if number == 4401:
        return UnauthorizedError(f"Relay closed: {reason}.", status=401)
    return RelayClosedError(f"Relay closed ({number}: {reason}).", close_code=number)


class RelayConnection:
    """One open relay socket; iterate it for the server's frames."""

    def __init__(self, socket: ClientConnection) -> None:
        """Wrap an open socket; use :meth:`open`."""
        self._socket = socket

    def __repr__(self) -> str:
        """Return a representation without the token."""
        return "RelayConnection()"

    @classmethod
    async def open(
        cls, base_url: str, token: str, *, open_timeout: float = 10.0
    ) -> RelayConnection:
        """Connect and authenticate with ``token`` in the Authorization header."""
        try:
            socket = await connect(
                relay_url(base_url),
                origin=_origin(base_url),  # type: ignore[arg-type]
                additional_headers={"Authorization": f"Bearer {token}"},
                max_size=MAX_FRAME_BYTES,
                open_timeout=open_timeout,
                ping_interval=20,
                ping_timeout=20,
                proxy=None,
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise UnauthorizedError(
                    "The relay refused the token.", status=401
                ) from None
            if status == 403:
                # Denied at connect: revoked or not approved (or bad origin).
                raise UnauthorizedError(
                    "The relay refused the device.", status=403
                ) from None
            if status == 404:
                raise RelayUnavailableError() from None
            raise TransportError(f"The relay answered HTTP {status}.") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise TransportError(
                f"Cannot reach the relay ({type(exc).__name__})."
            ) from None
        return cls(socket)

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Yield the server's frames until the socket closes, then raise.

        The iteration ends by raising :class:`RelayClosedError`,
        :class:`UnauthorizedError` (4401) or :class:`DeviceRevokedError`
        (4403).
        """
        while True:
            try:
                raw = await self._socket.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                raise closed_error(code) from None
            if isinstance(raw, bytes):
                raise ProtocolError("The relay sent a binary frame.")
            try:
                frame = json.loads(raw)
            except ValueError:
                raise ProtocolError(
                    "The relay sent a frame that is not JSON."
                ) from None
            if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                raise ProtocolError("The relay sent a frame without a type.")
            yield frame

    async def _send(self, frame: dict[str, Any]) -> None:
        try:
            await self._socket.send(json.dumps(frame, separators=(",", ":")))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            raise closed_error(code) from None

    async def ack(self, up_to_seq: int) -> None:
        """Acknowledge every envelope up to ``up_to_seq``."""
        await self._send({"type": "ack", "up_to_seq": up_to_seq})

    async def ping(self) -> None:
        """Send an application-level ping."""
        await self._send({"type": "ping"})

    async def send_message(
        self, room_id: str, client_message_id: str, envelopes: list[dict[str, str]]
    ) -> None:
        """Send a message over the socket (answered by a ``sent`` frame)."""
        await self._send(
            {
                "type": "send",
                "room_id": room_id,
                "client_message_id": client_message_id,
                "envelopes": envelopes,
            }
        )

    async def close(self) -> None:
        """Close the socket normally."""
        await self._socket.close()
