"""Provide :class:`AgentVaultClient`, the synchronous face of the SDK.

It runs an :class:`~agentvault_client.aio.AsyncAgentVaultClient` on a private
event loop in a background thread and waits for each call, so both APIs
share one implementation::

    with AgentVaultClient.open("laptop") as client:
        room = client.resolve_room("ops")
        client.send(room.room_id, "How full is the disk?")
        for message in client.messages(room_id=room.room_id):
            print(message.text)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

from agentvault_client.aio import (
    AsyncAgentVaultClient,
    DeviceInfo,
    Room,
    RoomDevice,
    SendResult,
)
from agentvault_client.messages import KIND_TEXT, Message
from agentvault_client.profile import DEFAULT_PROFILE

__all__ = ["AgentVaultClient"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="agentvault-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class AgentVaultClient:
    """Talk to an AgentVault server as one enrolled device (blocking calls)."""

    def __init__(self, inner: AsyncAgentVaultClient, runner: _LoopThread) -> None:
        """Wrap an async client; use :meth:`open` or :meth:`enroll`."""
        self._inner = inner
        self._runner = runner

    def __repr__(self) -> str:
        """Return the profile and device id only."""
        return f"AgentVaultClient({self._inner.profile.name!r})"

    @property
    def aio(self) -> AsyncAgentVaultClient:
        """Return the asyncio client underneath (runs on the private loop)."""
        return self._inner

    @classmethod
    def open(
        cls, name: str = DEFAULT_PROFILE, *, home: Path | None = None, **kwargs: Any
    ) -> AgentVaultClient:
        """Return a client for the enrolled profile ``name``."""
        runner = _LoopThread()

        async def build() -> AsyncAgentVaultClient:
            return AsyncAgentVaultClient.open(name, home=home, **kwargs)

        try:
            return cls(runner.run(build()), runner)
        except BaseException:
            runner.stop()
            raise

    @classmethod
    def enroll(
        cls,
        *,
        server_url: str,
        invite_token: str,
        device_name: str,
        name: str = DEFAULT_PROFILE,
        home: Path | None = None,
        **kwargs: Any,
    ) -> AgentVaultClient:
        """Create profile ``name`` and enroll it (the device is then pending)."""
        runner = _LoopThread()
        try:
            inner = runner.run(
                AsyncAgentVaultClient.enroll(
                    server_url=server_url,
                    invite_token=invite_token,
                    device_name=device_name,
                    name=name,
                    home=home,
                    **kwargs,
                )
            )
        except BaseException:
            runner.stop()
            raise
        return cls(inner, runner)

    def close(self) -> None:
        """Stop receiving and close everything."""
        try:
            self._runner.run(self._inner.aclose(), timeout=30)
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        """Return the client itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()

    # -- delegated calls ------------------------------------------------------

    @property
    def device_id(self) -> str:
        """Return this device's id."""
        return self._inner.device_id

    def fingerprint(self) -> str:
        """Return this device's fingerprint."""
        return self._runner.run(self._inner.fingerprint())

    def safety_number(self, device: RoomDevice | str) -> str:
        """Return the 60-digit safety number shared with a peer device."""
        return self._runner.run(self._inner.safety_number(device))

    def device_info(self) -> DeviceInfo:
        """Return this device as the server sees it."""
        return self._runner.run(self._inner.device_info())

    def wait_for_approval(
        self, *, poll_interval: float = 2.0, timeout: float | None = None
    ) -> DeviceInfo:
        """Block until an admin approves this device; then publish prekeys."""
        return self._runner.run(
            self._inner.wait_for_approval(poll_interval=poll_interval, timeout=timeout)
        )

    def refill_prekeys(self, minimum: int = 10) -> int:
        """Publish prekeys when fewer than ``minimum`` are left on the server."""
        return self._runner.run(self._inner.refill_prekeys(minimum))

    def rooms(self) -> list[Room]:
        """Return this member's rooms."""
        return self._runner.run(self._inner.rooms())

    def resolve_room(self, ref: str) -> Room:
        """Return the room whose id or unique name is ``ref``."""
        return self._runner.run(self._inner.resolve_room(ref))

    def room_devices(self, room_id: str, *, refresh: bool = False) -> list[RoomDevice]:
        """Return the active devices of a room."""
        return self._runner.run(self._inner.room_devices(room_id, refresh=refresh))

    def send(
        self,
        room_id: str,
        text: str,
        *,
        kind: str = KIND_TEXT,
        reply_to: str | None = None,
        client_message_id: str | None = None,
    ) -> SendResult:
        """Encrypt ``text`` for every device of the room and send it."""
        return self._runner.run(
            self._inner.send(
                room_id,
                text,
                kind=kind,
                reply_to=reply_to,
                client_message_id=client_message_id,
            )
        )

    def poll_inbox(self) -> int:
        """Fetch, store and acknowledge the REST inbox; return the count."""
        return self._runner.run(self._inner.poll_inbox())

    def messages(
        self,
        *,
        room_id: str | None = None,
        include_outgoing: bool = True,
        timeout: float | None = None,
    ) -> Iterator[Message]:
        """Yield received messages in order (blocking; see the async twin).

        With ``timeout``, the iteration ends when no message arrives for that
        many seconds.
        """
        stream = self._inner.messages(
            room_id=room_id, include_outgoing=include_outgoing
        )

        async def step() -> Message:
            return await asyncio.wait_for(anext(stream), timeout)

        try:
            while True:
                try:
                    yield self._runner.run(step())
                except (TimeoutError, StopAsyncIteration):
                    return
        finally:
            self._runner.run(stream.aclose())
