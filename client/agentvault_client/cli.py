"""The ``agentvault`` command: enroll a device, talk in rooms, run agents.

Each device lives in a profile directory (``--profile``, default
``default``) under ``$AGENTVAULT_HOME`` or ``~/.agentvault``. Exit codes:
0 success, 1 an SDK or server error (``error: <code>: <message>`` on
standard error), 2 bad usage, 3 the device is revoked or not approved,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from agentvault_client.aio import AsyncAgentVaultClient, DeviceInfo, RoomDevice
from agentvault_client.crypto.safety import format_safety_number, safety_numbers_match
from agentvault_client.errors import AuthError, NotFoundError, SdkError
from agentvault_client.messages import Message
from agentvault_client.profile import DEFAULT_PROFILE

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130
_SPINNER = "|/-\\"


def _out(text: str = "", *, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _json_line(data: Any) -> None:
    _out(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _home(args: argparse.Namespace) -> Path | None:
    return Path(args.home).expanduser() if args.home else None


def _client(args: argparse.Namespace) -> AsyncAgentVaultClient:
    return AsyncAgentVaultClient.open(args.profile, home=_home(args))


# --- enroll -----------------------------------------------------------------


def _invite_token(args: argparse.Namespace) -> str:
    if args.invite_file:
        return Path(args.invite_file).read_text("utf-8").strip()
    if args.invite:
        return str(args.invite)
    from_env = os.environ.get("AGENTVAULT_INVITE")
    if from_env:
        return from_env.strip()
    if sys.stdin.isatty():
        return getpass.getpass("Invite token (not echoed): ").strip()
    return sys.stdin.readline().strip()


class _Progress:
    """Show that the CLI is still waiting: a spinner on a terminal, else lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.ticks = 0
        self.last_line = 0.0

    def __call__(self, info: DeviceInfo, elapsed: float) -> None:
        self.ticks += 1
        if info.status != "pending":
            if self.tty:
                self.stream.write("\r" + " " * 60 + "\r")
            return
        if self.tty:
            spin = _SPINNER[self.ticks % len(_SPINNER)]
            self.stream.write(f"\r{spin} waiting for approval ({int(elapsed)} s)")
            self.stream.flush()
        elif elapsed - self.last_line >= 10 or self.ticks == 1:
            self.last_line = elapsed
            self.stream.write(f"waiting for approval ({int(elapsed)} s)\n")
            self.stream.flush()


async def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll this machine as a new device and wait for approval."""
    token = _invite_token(args)
    if not token:
        _err("error: no invite token (use --invite-file, AGENTVAULT_INVITE or stdin)")
        return EXIT_USAGE
    name = args.name or f"{getpass.getuser()}@{platform.node() or 'device'}"
    client = await AsyncAgentVaultClient.enroll(
        server_url=args.server,
        invite_token=token,
        device_name=name,
        name=args.profile,
        home=_home(args),
    )
    async with client:
        fp = await client.fingerprint()
        _out(f"Enrolled device {client.device_id} in profile {args.profile!r}.")
        _out(f"Fingerprint: {fp}")
        _out("Read this fingerprint to your admin; they approve the device after")
        _out("checking it matches the one in the console.")
        if args.no_wait:
            return 0
        info = await client.wait_for_approval(
            poll_interval=args.poll_interval,
            timeout=args.timeout,
            on_poll=_Progress(sys.stderr),
        )
        count = (await client.prekey_status()).get("one_time_prekeys")
        _out(f"Approved: device {info.device_id} of {info.member_name} is active.")
        _out(f"Published prekeys; {count} one-time prekeys on the server.")
    return 0


async def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for an enrolled device's approval (after ``enroll --no-wait``)."""
    async with _client(args) as client:
        info = await client.wait_for_approval(
            poll_interval=args.poll_interval,
            timeout=args.timeout,
            on_poll=_Progress(sys.stderr),
        )
        _out(f"Approved: device {info.device_id} is active.")
    return 0


# --- status, rooms, devices ----------------------------------------------------


async def cmd_status(args: argparse.Namespace) -> int:
    """Show the profile, the device's server-side status and local counts."""
    async with _client(args) as client:
        info = await client.device_info()
        prekeys: dict[str, Any] = {}
        if info.status == "active":
            prekeys = await client.prekey_status()
        stored, pending = client.stored_counts()
        data = {
            "profile": client.profile.name,
            "path": str(client.profile.path),
            "server": client.profile.server_url,
            "device_id": info.device_id,
            "device_name": info.name,
            "member_id": info.member_id,
            "member_name": info.member_name,
            "status": info.status,
            "fingerprint": await client.fingerprint(),
            "one_time_prekeys": prekeys.get("one_time_prekeys"),
            "messages_stored": stored,
            "messages_pending": pending,
        }
    if args.json:
        _json_line(data)
    else:
        width = max(len(key) for key in data)
        for key, value in data.items():
            _out(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


async def cmd_rooms(args: argparse.Namespace) -> int:
    """List the rooms this device's member belongs to."""
    async with _client(args) as client:
        rooms = await client.rooms()
    if args.json:
        for room in rooms:
            _json_line({"id": room.room_id, "name": room.name, "members": room.members})
    elif not rooms:
        _out("No rooms yet; an admin adds your member to a room.")
    else:
        for room in rooms:
            _out(f"{room.room_id}  {room.name}  ({len(room.members)} members)")
    return 0


def _device_line(device: RoomDevice, me: str) -> str:
    mark = " (this device)" if device.device_id == me else ""
    return (
        f"{device.device_id}  member {device.member_id}  {device.name!r}"
        f"  fingerprint {device.fingerprint}{mark}"
    )


async def cmd_devices(args: argparse.Namespace) -> int:
    """List the active devices of one room, or of every room."""
    async with _client(args) as client:
        rooms = (
            [await client.resolve_room(args.room)]
            if args.room
            else await client.rooms()
        )
        for room in rooms:
            devices = await client.room_devices(room.room_id, refresh=True)
            if args.json:
                for device in devices:
                    _json_line(
                        {
                            "room_id": room.room_id,
                            "device_id": device.device_id,
                            "member_id": device.member_id,
                            "name": device.name,
                            "fingerprint": device.fingerprint,
                            "this_device": device.device_id == client.device_id,
                        }
                    )
                continue
            _out(f"Room {room.name} ({room.room_id}):")
            for device in devices:
                _out("  " + _device_line(device, client.device_id))
    return 0


# --- send, listen, chat ---------------------------------------------------------


def _texts_from_stdin(args: argparse.Namespace) -> list[str]:
    data = sys.stdin.read()
    if args.jsonl:
        texts = []
        for line in data.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            texts.append(item["text"] if isinstance(item, dict) else str(item))
        return texts
    if args.lines:
        return [line for line in data.splitlines() if line.strip()]
    return [data.removesuffix("\n")]


async def cmd_send(args: argparse.Namespace) -> int:
    """Send a message (the arguments, or standard input) to a room."""
    texts = [" ".join(args.text)] if args.text else _texts_from_stdin(args)
    if not texts or texts == [""]:
        _err("error: nothing to send")
        return EXIT_USAGE
    async with _client(args) as client:
        room = await client.resolve_room(args.room)
        for text in texts:
            result = await client.send(room.room_id, text)
            if args.json:
                _json_line(
                    {
                        "event": "sent",
                        "message_id": result.message_id,
                        "client_message_id": result.client_message_id,
                        "devices": result.devices,
                    }
                )
            elif not args.quiet:
                _out(f"sent {result.message_id} to {result.devices} device(s)")
    return 0


def _show(message: Message, *, as_json: bool, names: dict[str, str]) -> None:
    if as_json:
        _json_line({"event": "message", **message.to_dict()})
        return
    who = names.get(message.sender_member_id, message.sender_member_id[:8])
    if message.outgoing:
        who += " (you, other device)"
    if message.kind == "undecryptable":
        _out(f"[{who}] <could not decrypt: {message.error}>")
        return
    tag = "" if message.kind == "text" else f" {message.kind}"
    lines = message.text.split("\n")
    _out(f"[{who}{tag}] {lines[0]}")
    for line in lines[1:]:
        _out("    " + line)


async def _member_names(
    client: AsyncAgentVaultClient, room_id: str | None
) -> dict[str, str]:
    names: dict[str, str] = {client.member_id: "you"}
    if room_id is None:
        return names
    for device in await client.room_devices(room_id):
        names.setdefault(device.member_id, device.name or device.member_id[:8])
    return names


async def cmd_listen(args: argparse.Namespace) -> int:
    """Print received messages as they arrive (plain text or JSON lines)."""
    async with _client(args) as client:
        room_id = (await client.resolve_room(args.room)).room_id if args.room else None
        names = await _member_names(client, room_id)
        seen = 0

        async def consume() -> None:
            nonlocal seen
            async for message in client.messages(
                room_id=room_id, include_outgoing=not args.exclude_outgoing
            ):
                _show(message, as_json=args.json, names=names)
                seen += 1
                if args.count and seen >= args.count:
                    return

        try:
            await asyncio.wait_for(consume(), args.timeout)
        except TimeoutError:
            if args.count:
                _err(f"error: timeout: received {seen} of {args.count} messages")
                return EXIT_ERROR
    return 0


async def _stdin_lines() -> Any:
    """Yield lines of standard input without blocking the event loop."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line


async def cmd_chat(args: argparse.Namespace) -> int:
    """Chat in a room: typed lines are sent, incoming messages printed.

    With ``--json``, input lines are JSON (a string or ``{"text": ...}``)
    and output lines are ``{"event": "message"|"sent"|"error", ...}``. The
    chat ends at end of input (after ``--linger`` seconds) or Ctrl-C.
    """
    async with _client(args) as client:
        room = await client.resolve_room(args.room)
        names = await _member_names(client, room.room_id)
        if not args.json and sys.stdin.isatty():
            _out(f"Chatting in {room.name}. Type a message and Enter; Ctrl-D quits.")

        async def receive() -> None:
            async for message in client.messages(room_id=room.room_id):
                _show(message, as_json=args.json, names=names)

        receiver = asyncio.ensure_future(receive())
        try:
            async for line in _stdin_lines():
                text = line.removesuffix("\n")
                if args.json:
                    if not text.strip():
                        continue
                    item = json.loads(text)
                    text = item["text"] if isinstance(item, dict) else str(item)
                    cmid = item.get("id") if isinstance(item, dict) else None
                elif not text.strip():
                    continue
                else:
                    cmid = None
                try:
                    result = await client.send(
                        room.room_id, text, client_message_id=cmid
                    )
                except SdkError as exc:
                    if not args.json:
                        _err(f"error: {exc.code}: {exc.message}")
                    else:
                        _json_line({"event": "error", "code": exc.code, "id": cmid})
                    continue
                if args.json:
                    _json_line(
                        {
                            "event": "sent",
                            "message_id": result.message_id,
                            "client_message_id": result.client_message_id,
                        }
                    )
                if receiver.done():
                    break
            if args.linger and not receiver.done():
                await asyncio.wait([receiver], timeout=args.linger)
        finally:
            receiver.cancel()
            try:
                await receiver
            except asyncio.CancelledError:
                pass
    return 0


# --- fingerprints and safety numbers ----------------------------------------------


async def cmd_fingerprint(args: argparse.Namespace) -> int:
    """Show this device's fingerprint (and the room's devices' with --room)."""
    async with _client(args) as client:
        _out(f"This device ({client.device_id}): {await client.fingerprint()}")
        if args.room:
            room = await client.resolve_room(args.room)
            for device in await client.room_devices(room.room_id, refresh=True):
                if device.device_id != client.device_id:
                    _out(f"{device.device_id} ({device.name}): {device.fingerprint}")
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    """Show the safety number with a peer device; compare it when given."""
    async with _client(args) as client:
        target: RoomDevice | str = args.device
        rooms = (
            [await client.resolve_room(args.room)]
            if args.room
            else await client.rooms()
        )
        for room in rooms:
            for device in await client.room_devices(room.room_id, refresh=True):
                if device.device_id == args.device:
                    target = device
        if isinstance(target, str):
            raise NotFoundError(f"Device {args.device} is in none of your rooms.")
        number = await client.safety_number(target)
    _out(f"Safety number with {target.name or target.device_id}:")
    _out("  " + format_safety_number(number))
    if args.number is None:
        _out("Compare it with the number the other device shows (in person or on a")
        _out("trusted channel); then run verify again with --number to check it.")
        return 0
    if safety_numbers_match(number, args.number):
        _out("MATCH: the identity keys are the ones both devices hold.")
        return 0
    _out("MISMATCH: do not trust this device until the keys are checked.")
    return EXIT_ERROR


# --- agent bridge ---------------------------------------------------------------


async def cmd_agent_run(args: argparse.Namespace) -> int:
    """Put a local program behind the relay (see agentvault_client.bridge)."""
    from agentvault_client.bridge import AgentBridge

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _err("error: give the program after --, e.g. agent run --room R -- ./bot")
        return EXIT_USAGE
    if not _runnable(command[0]):
        _err(
            f"error: program_not_found: {command[0]} is neither an executable"
            " file nor a command on PATH"
        )
        return EXIT_USAGE
    async with _client(args) as client:
        room = await client.resolve_room(args.room)
        bridge = AgentBridge(
            client,
            room.room_id,
            command,
            mode=args.mode,
            timeout=args.timeout,
            status=lambda text: _err(f"agent: {text}"),
        )
        await bridge.run()
    return 0


def _runnable(program: str) -> bool:
    """Whether ``program`` names an executable file or a command on PATH."""
    if os.sep in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return shutil.which(program) is not None


# --- parser and entry point ---------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``agentvault`` command."""
    parser = argparse.ArgumentParser(
        prog="agentvault",
        description="End-to-end encrypted rooms between owners and their agents.",
    )
    parser.add_argument(
        "--profile",
        default=os.environ.get("AGENTVAULT_PROFILE") or DEFAULT_PROFILE,
        help="profile (device) to use (default: %(default)s)",
    )
    parser.add_argument(
        "--home", help="profiles directory (default: $AGENTVAULT_HOME or ~/.agentvault)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("enroll", help="enroll this device with an invite")
    p.add_argument(
        "--server", required=True, help="server URL, e.g. https://av.example"
    )
    p.add_argument("--invite", help="invite token (prefer --invite-file or stdin)")
    p.add_argument("--invite-file", help="read the invite token from this file")
    p.add_argument("--name", help="device name shown to admins")
    p.add_argument("--no-wait", action="store_true", help="do not wait for approval")
    p.add_argument("--timeout", type=float, help="give up waiting after this many s")
    p.add_argument("--poll-interval", type=float, default=2.0)
    p.set_defaults(run=cmd_enroll)

    p = sub.add_parser("wait", help="wait for this device's approval")
    p.add_argument("--timeout", type=float)
    p.add_argument("--poll-interval", type=float, default=2.0)
    p.set_defaults(run=cmd_wait)

    p = sub.add_parser("status", help="show this device's status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("rooms", help="list your rooms")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_rooms)

    p = sub.add_parser("devices", help="list the devices in your rooms")
    p.add_argument("--room", help="room id or name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_devices)

    p = sub.add_parser("send", help="send a message to a room")
    p.add_argument("--room", required=True, help="room id or name")
    p.add_argument("text", nargs="*", help="message text (default: standard input)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--lines", action="store_true", help="one message per input line"
    )
    group.add_argument(
        "--jsonl", action="store_true", help='one JSON string or {"text": ...} per line'
    )
    p.add_argument("--json", action="store_true", help="print receipts as JSON lines")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("listen", help="print incoming messages")
    p.add_argument("--room", help="only this room (id or name)")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument(
        "--exclude-outgoing",
        action="store_true",
        help="hide what your other devices sent",
    )
    p.set_defaults(run=cmd_listen)

    p = sub.add_parser("chat", help="interactive chat in a room")
    p.add_argument("--room", required=True, help="room id or name")
    p.add_argument("--json", action="store_true", help="JSON lines in and out")
    p.add_argument(
        "--linger", type=float, default=0.0, help="keep receiving this long after EOF"
    )
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("fingerprint", help="show fingerprints")
    p.add_argument("--room", help="also list the devices of this room")
    p.set_defaults(run=cmd_fingerprint)

    p = sub.add_parser("verify", help="show or check the safety number with a device")
    p.add_argument("device", help="peer device id")
    p.add_argument("--room", help="room to look the device up in")
    p.add_argument("--number", help="the 60 digits the other device shows")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("agent", help="run a local agent behind the relay")
    agent = p.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    p = agent.add_parser(
        "run",
        help="answer a room's messages with a local program",
        description="Hand each incoming message to COMMAND and send back its answer.",
    )
    p.add_argument("--room", required=True, help="room id or name")
    p.add_argument(
        "--mode",
        choices=["message", "lines"],
        default="message",
        help="message: run COMMAND once per message (text on stdin, answer on "
        "stdout); lines: keep COMMAND running, one JSON line per message each way",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for an answer"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(run=cmd_agent_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``agentvault`` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = os.environ.get("AGENTVAULT_LOG", "").upper()
    if level:
        logging.basicConfig(
            level=getattr(logging, level, logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except AuthError as exc:
        _err(f"error: {exc.code}: {exc.message}")
        return EXIT_AUTH
    except SdkError as exc:
        _err(f"error: {exc.code}: {exc.message}")
        return EXIT_ERROR
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _err(f"error: file_error: {exc.strerror or exc}{where}")
        return EXIT_ERROR
    except UnicodeDecodeError:
        _err("error: bad_input: a file given is not UTF-8 text")
        return EXIT_ERROR
    except ValueError as exc:
        _err(f"error: bad_input: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover - module entry point
    sys.exit(main())
