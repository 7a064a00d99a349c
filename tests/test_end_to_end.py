"""The main job end to end: real daphne, real CLI processes, real sockets.

One server runs against the test database for the whole module; the tests
run in file order and share one tenant: an owner with two devices, an agent
behind ``agentvault agent run``, and later a third owner device.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import CliProcess, World
from tests.servers import ServerProcess, server_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
AGENT = [sys.executable, str(ROOT / "tests" / "e2e_agent.py")]
#: Messages the owner sends in the bulk test; each is answered by the agent.
BULK = int(os.environ.get("AV_E2E_MESSAGES", "500"))

SCRIPTS = [
    "Hello, agent! 👋🤖 marker-latin",
    "Привет, как дела? marker-cyrillic",
    "こんにちは、エージェントさん marker-japanese",
    "مرحبا بالعميل marker-arabic",
    "שלום סוכן marker-hebrew",
    "नमस्ते एजेंट marker-devanagari",
    "你好，代理 🐉 marker-chinese",
    "Ελληνικά κείμενα marker-greek",
    "emoji 👨‍👩‍👧‍👦🏳️‍🌈🧑🏽‍💻 zwj marker-emoji",
]
MULTILINE = "\n".join(
    f"line {i}: the quick brown fox {'jumps ' * (i % 7)}over the lazy dog — marker-ml"
    for i in range(300)
)
PAYLOAD_60K = ("0123456789abcdef" * 3840)[:61440]
PAYLOAD_60K = "payload-60k:" + PAYLOAD_60K[12:]


@pytest.fixture(scope="module")
def world(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any
) -> Iterator[World]:
    """Start a server on the test database and a tenant with an owner."""
    with django_db_blocker.unblock():
        log = tmp_path_factory.mktemp("server") / "daphne.log"
        server = ServerProcess(server_env(), log_path=log).start()
        world = World(server, tmp_path_factory.mktemp("profiles"))
        try:
            yield world
        finally:
            world.close()
            server.stop()


@pytest.fixture(scope="module")
def setup(
    world: World, django_db_blocker: Any, tmp_path_factory: Any
) -> dict[str, Any]:
    """Enroll owner device A and B and the agent, make the room, start the bridge."""
    with django_db_blocker.unblock():
        owner_a = world.enroll(
            "owner-a", world.invite(member=world.owner), name="laptop"
        )
        owner_b = world.enroll(
            "owner-b", world.invite(member=world.owner), name="phone"
        )
        agent = world.enroll(
            "agent", world.invite(name="probe", kind="agent"), name="probe-host"
        )
        agent_member = world.member_of(agent)
        room = world.create_room("ops", [world.owner, agent_member])

    pid_file = tmp_path_factory.mktemp("agent") / "pid"
    bridge = world.spawn(
        "agent",
        "agent",
        "run",
        "--room",
        "ops",
        "--mode",
        "lines",
        "--timeout",
        "60",
        "--",
        *AGENT,
        E2E_PID_FILE=str(pid_file),
    )
    chat = world.spawn("owner-a", "chat", "--room", room, "--json")
    listen_b = world.spawn("owner-b", "listen", "--room", room, "--json")
    return {
        "owner_a": owner_a,
        "owner_b": owner_b,
        "agent": agent,
        "agent_member": agent_member,
        "room": room,
        "bridge": bridge,
        "chat": chat,
        "listen_b": listen_b,
        "pid_file": pid_file,
        "sent": [],
    }


def _replies(process: CliProcess) -> list[dict[str, Any]]:
    return [m for m in process.messages() if not m["outgoing"]]


def _exchange(setup: dict[str, Any], texts: list[str], *, timeout: float) -> None:
    chat: CliProcess = setup["chat"]
    before = len(_replies(chat))
    for text in texts:
        chat.write({"text": text})
        setup["sent"].append(text)
    chat.wait_for(
        lambda p: len(_replies(p)) >= before + len(texts),
        timeout,
        f"{len(texts)} replies",
    )


def test_messages_arrive_intact_in_order_exactly_once(setup: dict[str, Any]) -> None:
    texts = [*SCRIPTS, MULTILINE, PAYLOAD_60K]
    texts += [f"bulk message {i:05d} marker-bulk-{i}" for i in range(BULK)]
    started = time.monotonic()
    _exchange(setup, texts, timeout=300)
    elapsed = time.monotonic() - started

    replies = _replies(setup["chat"])
    assert [r["text"] for r in replies] == ["echo:" + t for t in setup["sent"]]
    assert all(r["kind"] == "text" and r["error"] is None for r in replies)
    assert len({r["message_id"] for r in replies}) == len(replies)
    print(f"{len(texts)} round trips in {elapsed:.1f} s")
