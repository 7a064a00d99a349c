"""The agent bridge: answers, failures, timeouts and restarts reach the room."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentvault_client.bridge import AgentBridge
from agentvault_client.messages import Message

PY = sys.executable


def _message(seq: int, text: str, kind: str = "text") -> Message:
    return Message(
        local_id=seq,
        seq=seq,
        message_id=f"m{seq}",
        room_id="r1",
        sender_device_id="d-owner",
        sender_member_id="u-owner",
        server_ts="",
        kind=kind,
        text=text,
        error="decrypt_failed" if kind == "undecryptable" else None,
    )


class FakeClient:
    """Feed messages to the bridge and record what it sends."""

    def __init__(self, messages: list[Message]) -> None:
        self.inbox = messages
        self.sent: list[dict[str, Any]] = []

    async def messages(self, **kwargs: Any) -> AsyncIterator[Message]:
        for message in self.inbox:
            yield message

    async def send(self, room_id: str, text: str, **kwargs: Any) -> None:
        self.sent.append({"room_id": room_id, "text": text, **kwargs})


def _run(messages: list[Message], command: list[str], **kwargs: Any) -> FakeClient:
    client = FakeClient(messages)
    bridge = AgentBridge(client, "r1", command, **kwargs)  # type: ignore[arg-type]
    asyncio.run(bridge.run())
    return client


UPPER = [PY, "-c", "import sys; print(sys.stdin.read().upper())"]


def test_each_message_is_answered_as_a_reply() -> None:
    client = _run([_message(1, "hello 👋"), _message(2, "two")], UPPER)

    assert [(s["kind"], s["text"]) for s in client.sent] == [
        ("text", "HELLO 👋"),
        ("text", "TWO"),
    ]
    assert [s["reply_to"] for s in client.sent] == ["m1", "m2"]
    assert [s["client_message_id"] for s in client.sent] == ["r-m1", "r-m2"]


def test_a_failing_program_is_reported_with_its_error_output() -> None:
    failing = [PY, "-c", "import sys; print('partial'); sys.exit('it broke')"]
    client = _run([_message(1, "x")], failing)

    assert [s["kind"] for s in client.sent] == ["text", "agent_error"]
    assert client.sent[0]["text"] == "partial"
    assert "exit status 1" in client.sent[1]["text"]
    assert "it broke" in client.sent[1]["text"]
    assert client.sent[1]["client_message_id"] == "r-m1-1"


def test_a_hanging_program_is_stopped_and_reported() -> None:
    client = _run(
        [_message(1, "x")], [PY, "-c", "import time; time.sleep(30)"], timeout=0.5
    )
    assert client.sent[0]["kind"] == "agent_error"
    assert "did not answer within 0.5 s" in client.sent[0]["text"]


def test_a_missing_program_is_reported() -> None:
    client = _run([_message(1, "x")], ["/nonexistent/agent"])
    assert client.sent[0]["kind"] == "agent_error"
    assert "cannot start" in client.sent[0]["text"]


def test_an_undecryptable_message_is_reported_not_dropped() -> None:
    client = _run([_message(1, "", kind="undecryptable")], UPPER)
    assert client.sent[0]["kind"] == "agent_error"
    assert "could not be decrypted (decrypt_failed)" in client.sent[0]["text"]


def test_a_replayed_message_is_reported_without_asking_to_resend() -> None:
    replayed = dataclasses.replace(
        _message(2, "", kind="undecryptable"), error="duplicate_message"
    )
    client = _run([replayed], UPPER)
    assert client.sent[0]["kind"] == "agent_error"
    assert "repeats one already received" in client.sent[0]["text"]
    assert "send it again" not in client.sent[0]["text"]


def test_other_kinds_are_not_answered() -> None:
    client = _run([_message(1, "note", kind="agent_status")], UPPER)
    assert client.sent == []


LINES = [
    PY,
    "-c",
    "import json, os, sys\n"
    "for line in sys.stdin:\n"
    "    text = json.loads(line)['text']\n"
    "    if text == 'crash': os._exit(7)\n"
    "    print(json.dumps({'text': 'got ' + text}), flush=True)\n",
]


def test_lines_mode_reports_a_crash_and_restarts_the_program() -> None:
    messages = [_message(1, "a"), _message(2, "crash"), _message(3, "b")]
    client = _run(messages, LINES, mode="lines", timeout=10)

    kinds = [(s["kind"], s["reply_to"]) for s in client.sent]
    assert kinds == [("text", "m1"), ("agent_error", "m2"), ("text", "m3")]
    assert "exit status 7" in client.sent[1]["text"]
    assert client.sent[2]["text"] == "got b"


def _gone(pid: int) -> bool:
    """Return whether the process has ended (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 2
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_a_timeout_is_reported_while_a_grandchild_holds_the_output(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    command = ["sh", "-c", f"sleep 8 & echo $! > {pid_file}; wait; echo late"]

    started = time.monotonic()
    client = _run([_message(1, "x")], command, timeout=1)
    elapsed = time.monotonic() - started

    assert elapsed < 3, f"timeout reported after {elapsed:.1f} s"
    assert [s["kind"] for s in client.sent] == ["agent_error"]
    assert "did not answer within 1 s" in client.sent[0]["text"]
    assert _wait_gone(int(pid_file.read_text())), "the grandchild still runs"


LINES_WITH_GRANDCHILD = [
    PY,
    "-c",
    (
        "import json, subprocess, sys\n"
        "subprocess.Popen(['sleep', '8'])\n"
        "for line in sys.stdin:\n"
        "    text = json.loads(line)['text']\n"
        "    if text == 'hang': subprocess.run(['sleep', '8'])\n"
        "    print(json.dumps({'text': 'got ' + text}), flush=True)\n"
    ),
]


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_lines_mode_restarts_and_stops_despite_a_grandchild() -> None:
    """A timed-out program and its children are killed as a group, and
    neither the restart nor the final stop waits for their output pipes."""
    messages = [_message(1, "hang"), _message(2, "b")]

    started = time.monotonic()
    client = _run(messages, LINES_WITH_GRANDCHILD, mode="lines", timeout=1)
    elapsed = time.monotonic() - started

    # 1 s timeout, 1 s restart delay, start-up and slack.
    assert elapsed < 5, f"took {elapsed:.1f} s"
    kinds = [(s["kind"], s["reply_to"]) for s in client.sent]
    assert kinds == [("agent_error", "m1"), ("text", "m2")]
    assert "did not answer within 1 s" in client.sent[0]["text"]
    assert client.sent[1]["text"] == "got b"
