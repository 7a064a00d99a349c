"""Put a local program behind the relay: ``agentvault agent run``.

Every text message another member sends to the room goes to the program;
its answer goes back to the room, encrypted, as a reply to that message.

Two modes:

- ``message`` (default): the program runs once per message, reads the text
  on standard input and writes the answer on standard output. The message
  ids are in the environment (``AGENTVAULT_MESSAGE_ID``,
  ``AGENTVAULT_ROOM_ID``, ``AGENTVAULT_SENDER_MEMBER_ID``,
  ``AGENTVAULT_SENDER_DEVICE_ID``).
- ``lines``: the program keeps running. For each message the bridge writes
  one JSON line ``{"id", "room_id", "sender_member_id", "sender_device_id",
  "text"}`` to its standard input and waits for one line on its standard
  output: JSON ``{"text": ...}`` (optionally ``"kind"``) or plain text.
  Lines written while no message is waiting are sent as messages of their
  own.

Nothing is dropped silently: a failing, hanging, crashing or restarted
program, and a message that could not be decrypted, are reported to the room
as ``agent_error`` messages. The program is restarted with a growing delay.
Replies use the client message id ``r-<message id>``, so a bridge restarted
after a crash re-runs an unfinished message without the owner seeing a
second answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from agentvault_client.aio import AsyncAgentVaultClient
from agentvault_client.errors import DuplicateMessageError, SdkError
from agentvault_client.messages import (
    KIND_AGENT_ERROR,
    KIND_AGENT_STATUS,
    KIND_TEXT,
    KIND_UNDECRYPTABLE,
    MAX_BODY_BYTES,
    Message,
)

__all__ = ["AgentBridge", "describe_exit"]

logger = logging.getLogger(__name__)

MODE_MESSAGE = "message"
MODE_LINES = "lines"
#: Kept lines of the program's standard error, quoted in error reports.
STDERR_TAIL = 20
MAX_RESTART_DELAY = 30.0
#: How long a terminated program may take to exit before it is killed.
STOP_GRACE = 5.0
#: How long to wait for a killed program to be reaped.
KILL_GRACE = 2.0

Reply = tuple[str, str]


def _undecryptable_note(message: Message) -> str:
    """Tell the room about a message the bridge could not read."""
    if message.error == DuplicateMessageError.code:
        # Its text was read before (or it is a replay): nothing to resend.
        return (
            f"A message (seq {message.seq}) repeats one already received "
            f"({message.error}); ignored."
        )
    return (
        f"A message (seq {message.seq}) could not be decrypted "
        f"({message.error}); please send it again."
    )


def describe_exit(returncode: int | None) -> str:
    """Return "exit status N" or "killed by signal NAME" for a return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit status {returncode}"


def _clip(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= MAX_BODY_BYTES:
        return text
    note = "\n[answer cut: too long for one message]"
    room = MAX_BODY_BYTES - len(note.encode())
    return data[:room].decode("utf-8", errors="ignore") + note


def _signal_group(
    proc: asyncio.subprocess.Process, sig: signal.Signals = signal.SIGKILL
) -> None:
    """Send ``sig`` to the program and everything it started.

    The program runs in a session of its own, so its process group holds the
    children it started too. A child left behind would keep the output pipes
    open and the bridge waiting for them.
    """
    if sys.platform == "win32":
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return
    # ESRCH: the whole group is gone; EPERM: only zombies are left (macOS).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _wait_exit(
    proc: asyncio.subprocess.Process, timeout: float | None = None
) -> bool:
    """Wait until the program itself ended; return whether it did in time.

    ``Process.wait()`` also waits until the output pipes are closed, which a
    process that escaped the group may delay indefinitely. The return code
    is known as soon as the program is reaped, so poll for it instead.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while proc.returncode is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
    return True


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the program's process group and wait (briefly) for the program."""
    _signal_group(proc)
    if not await _wait_exit(proc, KILL_GRACE):
        logger.warning("Program %d not reaped %g s after SIGKILL", proc.pid, KILL_GRACE)


class ProgramExitedError(Exception):
    """The lines-mode program ended while a message waited for its answer."""


class AgentBridge:
    """Relay a room's messages to a local program and send back its answers."""

    def __init__(
        self,
        client: AsyncAgentVaultClient,
        room_id: str,
        command: list[str],
        *,
        mode: str = MODE_MESSAGE,
        timeout: float = 120.0,
        status: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Prepare the bridge; :meth:`run` starts it."""
        if mode not in (MODE_MESSAGE, MODE_LINES):
            raise ValueError(f"unknown mode {mode!r}")
        self.client = client
        self.room_id = room_id
        self.command = command
        self.mode = mode
        self.timeout = timeout
        self._status = status or (lambda text: None)
        self._env = dict(os.environ if env is None else env)
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: asyncio.Future[dict[str, Any]] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._tasks: list[asyncio.Task[Any]] = []
        self._restart_delay = 1.0
        self._started_at = 0.0
        self._stopping = False
        self._killed: asyncio.subprocess.Process | None = None
        self.handled = 0

    def __repr__(self) -> str:
        """Return the room and mode."""
        return f"AgentBridge(room_id={self.room_id!r}, mode={self.mode!r})"

    # -- main loop ------------------------------------------------------------

    async def run(self) -> None:
        """Serve the room until cancelled (or the device is revoked)."""
        self._status(
            f"serving room {self.room_id} with {self.command[0]!r} ({self.mode})"
        )
        try:
            if self.mode == MODE_LINES:
                await self._start_program()
            async for message in self.client.messages(
                room_id=self.room_id, include_outgoing=False
            ):
                await self._handle(message)
        finally:
            self._stopping = True
            await self._stop_program()

    async def _handle(self, message: Message) -> None:
        if message.kind == KIND_UNDECRYPTABLE:
            replies: list[Reply] = [(KIND_AGENT_ERROR, _undecryptable_note(message))]
        elif message.kind != KIND_TEXT:
            return
        elif self.mode == MODE_LINES:
            replies = await self._ask_lines(message)
        else:
            replies = await self._run_once(message)

        for index, (kind, text) in enumerate(replies):
            suffix = "" if index == 0 else f"-{index}"
            await self._send(
                kind,
                text,
                reply_to=message.message_id,
                client_message_id=f"r-{message.message_id}{suffix}",
            )
        self.handled += 1

    async def _send(
        self,
        kind: str,
        text: str,
        *,
        reply_to: str | None = None,
        client_message_id: str | None = None,
    ) -> None:
        try:
            await self.client.send(
                self.room_id,
                _clip(text),
                kind=kind,
                reply_to=reply_to,
                client_message_id=client_message_id,
            )
        except SdkError as exc:
            # Reported on the terminal; the owner cannot be told when sending fails.
            logger.exception("Could not send a %s message", kind)
            self._status(f"could not send a {kind} message: {exc.code}")
            raise

    def _program_env(self, message: Message | None) -> dict[str, str]:
        env = dict(self._env)
        env["AGENTVAULT_ROOM_ID"] = self.room_id
        if message is not None:
            env.update(
                AGENTVAULT_MESSAGE_ID=message.message_id,
                AGENTVAULT_SENDER_MEMBER_ID=message.sender_member_id,
                AGENTVAULT_SENDER_DEVICE_ID=message.sender_device_id,
            )
        return env

    def _stderr_note(self) -> str:
        if not self._stderr:
            return ""
        return "\nLast lines of its error output:\n" + "\n".join(self._stderr)

    # -- one process per message ------------------------------------------------

    async def _run_once(self, message: Message) -> list[Reply]:
        self._stderr.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._program_env(message),
                start_new_session=True,
            )
        except OSError as exc:
            self._status(f"cannot start the program: {exc.strerror}")
            return [
                (KIND_AGENT_ERROR, f"The agent program cannot start: {exc.strerror}.")
            ]
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(message.text.encode("utf-8")), self.timeout
            )
        except TimeoutError:
            await _kill(proc)
            self._status(f"program timed out on message {message.message_id}")
            return [
                (
                    KIND_AGENT_ERROR,
                    (
                        f"The agent program did not answer within {self.timeout:g} s "
                        "and was stopped."
                    ),
                )
            ]
        self._stderr.extend(err.decode("utf-8", "replace").splitlines()[-STDERR_TAIL:])
        answer = out.decode("utf-8", "replace").rstrip("\n")
        if proc.returncode != 0:
            self._status(f"program failed: {describe_exit(proc.returncode)}")
            replies: list[Reply] = []
            if answer:
                replies.append((KIND_TEXT, answer))
            replies.append(
                (
                    KIND_AGENT_ERROR,
                    f"The agent program failed ({describe_exit(proc.returncode)})."
                    + self._stderr_note(),
                )
            )
            return replies
        if not answer:
            return [
                (KIND_AGENT_STATUS, "The agent program finished without an answer.")
            ]
        return [(KIND_TEXT, answer)]

    # -- one long-running process -----------------------------------------------

    async def _start_program(self) -> None:
        self._stderr.clear()
        while True:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self._program_env(None),
                    limit=4 * MAX_BODY_BYTES,
                    start_new_session=True,
                )
                break
            except OSError as exc:
                text = (
                    f"The agent program cannot start ({exc.strerror}); trying again "
                    f"in {self._restart_delay:g} s."
                )
                self._status(text)
                await self._send(KIND_AGENT_ERROR, text)
                await asyncio.sleep(self._restart_delay)
                self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY)
        self._started_at = time.monotonic()
        proc = self._proc
        self._tasks = [
            asyncio.ensure_future(self._read_stdout(proc)),
            asyncio.ensure_future(self._read_stderr(proc)),
            asyncio.ensure_future(self._supervise(proc)),
        ]
        self._status(f"program started (pid {proc.pid})")

    async def _stop_program(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # Children outlive a program that already exited; stop them too.
            _signal_group(proc, signal.SIGTERM)
            if not await _wait_exit(proc, STOP_GRACE):
                await _kill(proc)
            else:
                _signal_group(proc)
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            reply = self._parse_line(text)
            if reply is None:
                continue
            pending = self._pending
            if pending is not None and not pending.done():
                pending.set_result(reply)
            else:
                kind = str(reply.get("kind", KIND_TEXT))
                await self._send(
                    kind,
                    str(reply.get("text", "")),
                    client_message_id=f"u-{uuid.uuid4()}",
                )

    @staticmethod
    def _parse_line(text: str) -> dict[str, Any] | None:
        if not text.strip():
            return None
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(text)
                if isinstance(data, dict) and isinstance(data.get("text"), str):
                    if data.get("kind") not in (
                        None,
                        KIND_TEXT,
                        KIND_AGENT_ERROR,
                        KIND_AGENT_STATUS,
                    ):
                        data["kind"] = KIND_TEXT
                    return data
        return {"text": text}

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self._stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    async def _supervise(self, proc: asyncio.subprocess.Process) -> None:
        """Report the program's end to the room and start it again."""
        await _wait_exit(proc)
        returncode = proc.returncode
        if self._stopping or proc is not self._proc:
            return
        how = describe_exit(returncode)
        pending = self._pending
        if pending is not None and not pending.done():
            pending.set_exception(ProgramExitedError(how))
        elif proc is not self._killed:
            text = (
                f"The agent program stopped ({how}); restarting it in "
                f"{self._restart_delay:g} s." + self._stderr_note()
            )
            self._status(f"program stopped ({how})")
            with contextlib.suppress(SdkError):
                await self._send(KIND_AGENT_ERROR, text)
        await self._restart()

    async def _restart(self) -> None:
        uptime = time.monotonic() - self._started_at
        if uptime > 60:
            self._restart_delay = 1.0
        delay = self._restart_delay
        self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY)
        old = self._proc
        self._proc = None
        if old is not None:
            _signal_group(old)
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._start_program()

    async def _ask_lines(self, message: Message) -> list[Reply]:
        while self._proc is None or self._proc.returncode is not None:
            await asyncio.sleep(0.1)
        proc = self._proc
        assert proc.stdin is not None
        request = {
            "id": message.message_id,
            "room_id": message.room_id,
            "sender_member_id": message.sender_member_id,
            "sender_device_id": message.sender_device_id,
            "text": message.text,
        }
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending = pending
        try:
            proc.stdin.write(json.dumps(request, ensure_ascii=False).encode() + b"\n")
            await proc.stdin.drain()
            reply = await asyncio.wait_for(asyncio.shield(pending), self.timeout)
        except (ProgramExitedError, BrokenPipeError, ConnectionResetError) as exc:
            how = (
                str(exc) if isinstance(exc, ProgramExitedError) else "its input closed"
            )
            self._status(f"program stopped ({how}) during message {message.message_id}")
            return [
                (
                    KIND_AGENT_ERROR,
                    f"The agent program stopped ({how}) while handling this message; "
                    "it is being restarted. Send the message again if needed."
                    + self._stderr_note(),
                )
            ]
        except TimeoutError:
            self._status(f"program timed out on message {message.message_id}")
            self._killed = proc
            pending.cancel()  # its end is expected, not an error to report
            # Reaped before returning, so the next message waits for the
            # restarted program instead of writing to this one.
            await _kill(proc)
            return [
                (
                    KIND_AGENT_ERROR,
                    (
                        f"The agent program did not answer within {self.timeout:g} s; "
                        "it is being restarted."
                    ),
                )
            ]
        finally:
            self._pending = None
        kind = str(reply.get("kind", KIND_TEXT))
        return [(kind, str(reply.get("text", "")))]
