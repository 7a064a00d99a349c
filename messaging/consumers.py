"""The relay WebSocket consumer at ``/ws/v1/relay``.

Frames are JSON text objects with a ``type``.

Server to client: ``hello {device_id, last_acked_seq}``; the backlog as
``envelope {seq, message_id, room_id, sender_device_id, sender_member_id,
ciphertext, server_ts}`` in sequence order; ``queue_empty`` once the backlog
is out; then live ``envelope`` frames; ``sent {client_message_id,
message_id, server_ts}``; ``pong``; ``devices_changed {room_id}``;
``error {code, message, fields, client_message_id}``.

Client to server: ``ack {up_to_seq}``, ``send {room_id, client_message_id,
envelopes}`` (the REST send rules; a refusal is an ``error`` frame naming the
``client_message_id``, the socket stays open), ``ping``.

Authentication: a device token in the ``Authorization: Bearer`` header, in
a ``Sec-WebSocket-Protocol`` entry ``bearer.<token>`` (offer
``agentvault.v1`` beside it; the server selects that one and never echoes
the token), or in ``?token=``. The socket is accepted and then closed with
the code below, so clients can tell the reasons apart.

Delivery: PostgreSQL is the only source of what to push. A wake-up (from a
send in this process, or through the process's wake-up channel; see
``messaging.hub``), the per-process sweep every ``SWEEP_INTERVAL`` seconds
(which wakes the sockets behind their queue's last ``seq``) or an ack
opening the window makes the socket read deliveries after the last one it
pushed. At
most ``MAX_IN_FLIGHT`` envelopes (and ``MAX_IN_FLIGHT_BYTES`` of ciphertext,
beyond the first envelope) are unacknowledged per socket, which bounds the
memory a client that stops reading can pin on the server; an envelope
unacknowledged for ``ACK_TIMEOUT`` seconds closes the socket with 4408. A
reconnect resends everything after the acknowledged mark, so delivery is
at least once and clients drop sequence numbers they have already seen.

Close codes (application range 4000-4999):

====  ===================================================================
Code  Meaning
====  ===================================================================
4400  Malformed frame: not JSON text, not an object, unknown ``type``,
      bad ``ack``.
4401  Not authenticated: no token, a refused token, a non-device token, a
      deactivated member, or the token expired while connected.
4403  Device revoked (or not approved); also sent to every socket of a
      device the moment it is revoked, on every worker.
4408  Too slow: an envelope stayed unacknowledged for ``ACK_TIMEOUT``.
4409  Replaced by a newer connection of the same device.
4413  Frame larger than ``MAX_REQUEST_BYTES``.
4429  Too many frames (over ``FRAME_RATE`` per second, ``FRAME_BURST``).
4503  The server could not serve the socket (the database unreachable at
      connect, a delivery read failed); reconnect later and lose nothing,
      since delivery reads PostgreSQL.
====  ===================================================================

4503 stands where WebSocket's own 1011 would, which daphne does not let an
application send. A socket needs no Redis: the channel layer is read only by
the process's hub (``messaging.hub``), so a Redis outage delays cross-process
wake-ups until the sweep and closes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from agentvault.errors import ApiError, BadRequestError
from agentvault.observability import metrics
from messaging import events, sockets
from messaging.actions import acheck_send_rate, send_allowance
from messaging.conf import messaging_settings
from messaging.hub import RelayHub, relay_hub
from messaging.loops import spawn
from messaging.serializers import inbox_entry, parse_send, parse_seq, parse_uuid
from messaging.sockets import SocketClosedError, SocketIdentity

logger = logging.getLogger(__name__)

SUBPROTOCOL = "agentvault.v1"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."  # noqa: S105 (a prefix, not a secret)


def socket_token(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """Return (token, subprotocol to select) from a WebSocket scope."""
    subprotocols = list(scope.get("subprotocols") or [])
    chosen = SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), chosen
    for entry in subprotocols:
        if entry.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return entry[len(TOKEN_SUBPROTOCOL_PREFIX) :], chosen
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    tokens = query.get("token")
    return (tokens[0] if tokens else None), chosen


class _Bucket:
    """A token bucket for one socket's inbound frames."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RelayConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """One device's relay socket: push its queue, take its sends and acks."""

    # No channel of its own: the hub reads the channel layer for the process.
    channel_layer_alias = None
    identity: SocketIdentity | None = None
    closing = False
    counted_open = False
    hub: RelayHub | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve the socket; whatever ends it, leave the hub and stop timers."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the handler of an ASGI message.

        Channels' own dispatch first hops to a thread to close stale Django
        connections before every message. The relay's frames reach the
        database through its asyncio pool (``messaging.store``) and its
        thread units through ``database_sync_to_async``, which closes them
        itself, so that hop is skipped.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """Authenticate, greet, register with the hub and start pushing."""
        self.closing = False
        self.tasks: list[asyncio.Task[None]] = []
        self.timers: list[asyncio.TimerHandle] = []
        self.ack_timer: asyncio.TimerHandle | None = None
        self.hub: RelayHub | None = None
        self.pushed: collections.deque[tuple[int, float, int]] = collections.deque()
        self.inflight_bytes = 0
        token, subprotocol = socket_token(self.scope)

        # Authenticate off the event loop (token checks may fetch key sets).
        if not token:
            await self._refuse(subprotocol, sockets.CLOSE_UNAUTHENTICATED)
            return
        hub = relay_hub()
        try:
            identity, previous = await sockets.open_socket(token, await hub.start())
        except SocketClosedError as exc:
            await self._refuse(subprotocol, exc.close_code)
            return
        except Exception:
            logger.exception("Relay socket could not be opened")
            await self._refuse(subprotocol, sockets.CLOSE_UNAVAILABLE)
            return
        self.identity = identity
        self.allowance = send_allowance(identity.device_id)

        await self.accept(subprotocol)
        self.counted_open = True
        metrics.WEBSOCKET_CONNECTIONS.labels("accepted").inc()
        metrics.WEBSOCKET_CONNECTIONS_OPEN.inc()
        # The older socket of this device closes with 4409, here or where it
        # is (the process recorded on the queue row before this one).
        hub.replace_local(identity.device_id, identity.epoch)
        if previous and previous != hub.channel:
            hub.publish_soon(
                [events.replace(previous, identity.device_id, identity.epoch)]
            )
        self.last_pushed = identity.acked_seq
        self.wakeup = asyncio.Event()
        self.wakeup.set()
        self.frames = _Bucket(
            float(messaging_settings.FRAME_RATE), int(messaging_settings.FRAME_BURST)
        )
        await self._frame(
            "hello",
            device_id=str(identity.device_id),
            last_acked_seq=identity.acked_seq,
        )
        # Registered before the first read, so no local wake-up is missed.
        self.hub = hub
        hub.add(self)
        self.tasks = [asyncio.create_task(self._pump())]
        loop = asyncio.get_running_loop()
        self.timers.append(
            loop.call_later(
                max(0.0, identity.expires_at - time.time()), self._token_expired
            )
        )
        logger.info("Relay socket open for device %s", identity.device_id)

    async def _refuse(self, subprotocol: str | None, code: int) -> None:
        self.closing = True
        metrics.WEBSOCKET_CONNECTIONS.labels("refused").inc()
        metrics.WEBSOCKET_CLOSES.labels(str(code)).inc()
        await self.accept(subprotocol)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        """Stop the socket's tasks and leave the hub (safe to call twice)."""
        self._release()
        if self.identity is not None:
            logger.info(
                "Relay socket closed for device %s (code %s)",
                self.identity.device_id,
                code,
            )

    async def _shut(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        metrics.WEBSOCKET_CLOSES.labels(str(code)).inc()
        logger.info(
            "Closing relay socket of %s with %d (%s)",
            self.identity.device_id if self.identity else "-",
            code,
            reason,
        )
        self._stop()
        await self.close(code=code)

    def _release(self) -> None:
        """Mark the socket closed, uncount it and stop its work (idempotent)."""
        self.closing = True
        if self.counted_open:
            self.counted_open = False
            metrics.WEBSOCKET_CONNECTIONS_OPEN.dec()
        self._stop()

    def _stop(self) -> None:
        """Leave the hub, cancel timers and tasks (but not the caller)."""
        if self.hub is not None:
            self.hub.discard(self)
            self.hub = None
        for timer in getattr(self, "timers", []):
            timer.cancel()
        if getattr(self, "ack_timer", None) is not None:
            self.ack_timer.cancel()  # type: ignore[union-attr]
            self.ack_timer = None
        current = asyncio.current_task()
        for task in getattr(self, "tasks", []):
            if task is not current:
                task.cancel()

    async def _frame(self, kind: str, **fields: Any) -> None:
        if not self.closing:
            await self.send(text_data=json.dumps({"type": kind, **fields}))

    async def _error(self, error: ApiError, client_message_id: Any = None) -> None:
        fields: dict[str, Any] = {
            "code": error.error_code,
            "message": error.message,
            "fields": error.fields,
        }
        if isinstance(client_message_id, str):
            fields["client_message_id"] = client_message_id
        if error.retry_after is not None:
            fields["retry_after"] = round(error.retry_after, 3)
        await self._frame("error", **fields)

    # Inbound frames ----------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Check size, rate and shape of a frame, then handle it."""
        if self.identity is None or self.closing:
            return
        if text_data is None:
            await self._shut(sockets.CLOSE_MALFORMED, "binary frame")
            return
        if len(text_data.encode()) > int(messaging_settings.MAX_REQUEST_BYTES):
            await self._shut(sockets.CLOSE_TOO_LARGE, "frame too large")
            return
        if not self.frames.take():
            await self._shut(sockets.CLOSE_RATE_LIMITED, "frame rate")
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):
            # Nesting too deep for the decoder is as malformed as bad JSON.
            frame = None
        kind = frame.get("type") if isinstance(frame, dict) else None
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self._shut(sockets.CLOSE_MALFORMED, "malformed frame")
            return

        try:
            await handler(self, frame)
        except SocketClosedError as exc:
            await self._shut(exc.close_code, exc.reason)
        except Exception:
            # The database failed the frame (a send's batch statement, an
            # ack): nothing was stored for it, and the client resends after
            # reconnecting (sends are idempotent on client_message_id).
            logger.exception("Relay %s frame failed", kind)
            await self._shut(sockets.CLOSE_UNAVAILABLE, "frame failed")

    async def _on_ack(self, frame: dict[str, Any]) -> None:
        try:
            up_to = parse_seq(frame.get("up_to_seq"), "up_to_seq")
        except BadRequestError:
            await self._shut(sockets.CLOSE_MALFORMED, "bad ack")
            return
        assert self.identity is not None

        await sockets.ack_for_socket(self.identity, up_to)
        while self.pushed and self.pushed[0][0] <= up_to:
            _, _, size = self.pushed.popleft()
            self.inflight_bytes -= size
        self.wakeup.set()

    async def _on_send(self, frame: dict[str, Any]) -> None:
        client_id = frame.get("client_message_id")
        assert self.identity is not None
        try:
            room_id = parse_uuid(frame.get("room_id"), "room_id")
            send = parse_send(frame)
            await acheck_send_rate(self.allowance)
            result, queued = await sockets.send_for_socket(self.identity, room_id, send)
        except ApiError as error:
            await self._error(error, client_id)
            return

        if self.hub is not None:
            self.hub.post(queued)
        await self._frame(
            "sent",
            client_message_id=send.client_message_id,
            message_id=str(result.message_id),
            server_ts=result.server_ts.isoformat(),
        )

    async def _on_ping(self, frame: dict[str, Any]) -> None:
        assert self.identity is not None
        await sockets.check_socket(self.identity)
        await self._frame("pong")

    _handlers = {"ack": _on_ack, "send": _on_send, "ping": _on_ping}

    # Delivery ------------------------------------------------------------------

    async def _pump(self) -> None:
        """Push the backlog, then ``queue_empty``, then each new delivery.

        The device is checked once more first: a revocation that committed
        after the socket opened but before it joined the hub published its
        ``relay.revoke`` to nobody.
        """
        assert self.identity is not None
        window = int(messaging_settings.MAX_IN_FLIGHT)
        byte_window = int(messaging_settings.MAX_IN_FLIGHT_BYTES)
        backlog_done = False
        try:
            await sockets.check_socket(self.identity)
            while not self.closing:
                room = window - len(self.pushed)
                if self.inflight_bytes >= byte_window:
                    room = 0
                if room > 0:
                    self.wakeup.clear()
                    batch = min(room, 32)
                    assert self.hub is not None
                    entries = await self.hub.read(
                        self.identity, after=self.last_pushed, limit=batch + 1
                    )
                    more = len(entries) > batch
                    entries = entries[:batch]
                    sent = 0
                    for entry in entries:
                        if self.closing:
                            return
                        size = len(entry.ciphertext)
                        if self.pushed and self.inflight_bytes + size > byte_window:
                            break
                        await self._frame("envelope", **inbox_entry(entry))
                        metrics.ENVELOPES_PUSHED.labels("websocket").inc()
                        if backlog_done:
                            metrics.DELIVERY_LATENCY.observe(
                                max(0.0, time.time() - entry.server_ts.timestamp())
                            )
                        self.pushed.append((entry.seq, time.monotonic(), size))
                        self.inflight_bytes += size
                        self.last_pushed = entry.seq
                        self._arm_ack_timer()
                        sent += 1
                    drained = sent == len(entries) and not more
                    if not backlog_done and drained:
                        backlog_done = True
                        await self._frame("queue_empty")
                    if not drained:
                        continue
                await self.wakeup.wait()
        except SocketClosedError as exc:
            await self._shut(exc.close_code, exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Relay delivery failed for %s", self.identity.device_id)
            await self._shut(sockets.CLOSE_UNAVAILABLE, "delivery failed")

    def _close_soon(self, code: int, reason: str) -> None:
        """Close from a callback (outside any task of this socket)."""
        if not self.closing:
            spawn(self._shut(code, reason))

    def _token_expired(self) -> None:
        self._close_soon(sockets.CLOSE_UNAUTHENTICATED, "token expired")

    def _arm_ack_timer(self) -> None:
        """Watch the oldest unacknowledged envelope (a timer, only while any)."""
        if self.ack_timer is not None or not self.pushed or self.closing:
            return
        deadline = self.pushed[0][1] + float(messaging_settings.ACK_TIMEOUT)
        self.ack_timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()) + 0.01, self._ack_timer_fired
        )

    def _ack_timer_fired(self) -> None:
        self.ack_timer = None
        if self.closing or not self.pushed:
            return
        ack_timeout = float(messaging_settings.ACK_TIMEOUT)
        if time.monotonic() - self.pushed[0][1] > ack_timeout:
            self._close_soon(sockets.CLOSE_TOO_SLOW, "unacknowledged")
            return
        self._arm_ack_timer()

    def wake(self) -> None:
        """Make the delivery loop read its queue (new deliveries committed)."""
        if hasattr(self, "wakeup"):
            self.wakeup.set()

    @property
    def device_id(self) -> uuid.UUID:
        """The socket's device (only once authenticated)."""
        assert self.identity is not None
        return self.identity.device_id

    async def surveyed(self, state: sockets.DeviceState | None, *, sweep: bool) -> None:
        """Act on the per-process survey: close, or wake the delivery loop."""
        if self.closing or self.identity is None:
            return
        if state is None:
            await self._shut(sockets.CLOSE_REVOKED, "device_not_active")
            return
        refusal = state.close_for(self.identity)
        if refusal is not None:
            await self._shut(refusal.close_code, refusal.reason)
            return
        if sweep and state.last_seq > self.last_pushed:
            self.wakeup.set()

    # Events from the hub ------------------------------------------------------

    def revoked(self) -> None:
        """Close at once: the device was revoked."""
        self._close_soon(sockets.CLOSE_REVOKED, "device revoked")

    def replaced_by(self, epoch: int) -> None:
        """Close if a newer socket of the same device opened."""
        if self.identity is not None and epoch > self.identity.epoch:
            self._close_soon(sockets.CLOSE_REPLACED, "replaced")

    def devices_changed(self, room_id: uuid.UUID) -> None:
        """Tell the client to refresh a room's device list."""
        if not self.closing:
            spawn(self._frame("devices_changed", room_id=str(room_id)))
