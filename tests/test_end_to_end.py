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

from tests.e2e_support import AGENTVAULT, CliProcess, World
from tests.servers import ServerProcess, server_env

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
AGENT = [sys.executable, str(ROOT / "tests" / "e2e_agent.py")]
#: Messages the owner sends in the bulk test; each is answered by the agent.
BULK = int(os.environ.get("AV_E2E_MESSAGES", "800"))

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
        "world": world,
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
        "tokens": set(),
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
    setup["tokens"].update(setup["world"].tokens_in_profiles())


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
    assert elapsed < 300


def _check_owner_b(setup: dict[str, Any]) -> None:
    """Owner device B holds every message of A and every reply, once, in order."""
    listen_b: CliProcess = setup["listen_b"]
    expected = len(setup["sent"]) * 2
    listen_b.wait_for(lambda p: len(p.messages()) >= expected, 120, "device B")
    seen = listen_b.messages()
    assert len({m["message_id"] for m in seen}) == len(seen) == expected
    mine = [m["text"] for m in seen if m["outgoing"]]
    replies = [m["text"] for m in seen if not m["outgoing"]]
    assert mine == setup["sent"]
    assert replies == ["echo:" + t for t in setup["sent"]]
    assert all(m["sender_device_id"] == setup["owner_a"] for m in seen if m["outgoing"])


def test_the_owners_second_device_sees_every_message(setup: dict[str, Any]) -> None:
    _check_owner_b(setup)


def test_nothing_is_lost_or_duplicated_across_a_server_restart(
    setup: dict[str, Any], world: World
) -> None:
    chat: CliProcess = setup["chat"]
    before = len(_replies(chat))
    texts = [f"restart message {i:04d} marker-restart-{i}" for i in range(200)]
    for text in texts:
        chat.write({"text": text})
        setup["sent"].append(text)
    chat.wait_for(lambda p: len(_replies(p)) >= before + 40, 120, "first replies")

    world.server.restart()
    chat.wait_for(lambda p: len(_replies(p)) >= before + len(texts), 240, "all replies")
    setup["tokens"].update(world.tokens_in_profiles())

    replies = _replies(chat)
    assert [r["text"] for r in replies] == ["echo:" + t for t in setup["sent"]]
    assert len({r["message_id"] for r in replies}) == len(replies)
    _check_owner_b(setup)


def test_a_device_enrolled_later_starts_from_its_enrollment(
    setup: dict[str, Any], world: World, django_db_blocker: Any
) -> None:
    with django_db_blocker.unblock():
        owner_c = world.enroll(
            "owner-c", world.invite(member=world.owner), name="tablet"
        )
    listen_c = world.spawn("owner-c", "listen", "--room", setup["room"], "--json")
    texts = [f"after device C {i} marker-late-{i}" for i in range(5)]
    _exchange(setup, texts, timeout=120)

    listen_c.wait_for(lambda p: len(p.messages()) >= 10, 60, "device C")
    seen = listen_c.messages()
    assert [m["text"] for m in seen if m["outgoing"]] == texts
    assert [m["text"] for m in seen if not m["outgoing"]] == [
        "echo:" + t for t in texts
    ]
    assert owner_c not in {m["sender_device_id"] for m in seen}
    _check_owner_b(setup)


def test_a_device_approved_after_enroll_no_wait_publishes_prekeys_once_online(
    setup: dict[str, Any], world: World, django_db_blocker: Any
) -> None:
    import subprocess

    from enrollment.models import OneTimePrekey
    from tenants.scope import tenant_scope

    with django_db_blocker.unblock():
        token = world.invite(member=world.owner)
    enrolled = subprocess.run(
        [str(AGENTVAULT), "--profile", "owner-d", "enroll", "--no-wait"]
        + ["--server", world.server.url, "--name", "phone"],
        env=world.env(AGENTVAULT_INVITE=token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    device_id = enrolled.stdout.split()[2]

    def published() -> int:
        with django_db_blocker.unblock(), tenant_scope(world.tenant.pk):
            return OneTimePrekey.objects.filter(device_id=device_id).count()

    with django_db_blocker.unblock():
        world.approve(device_id)
    assert published() == 0
    # Coming online (here: listening) is enough; no `agentvault wait`.
    world.spawn("owner-d", "listen", "--room", setup["room"], "--json")
    deadline = time.monotonic() + 30
    while published() == 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert published() > 0


def test_killing_the_agent_program_is_reported_and_the_bridge_keeps_running(
    setup: dict[str, Any],
) -> None:
    chat: CliProcess = setup["chat"]
    pid_file: Path = setup["pid_file"]
    old_pid = int(pid_file.read_text())
    before = len(_replies(chat))

    chat.write({"text": "slow:30 marker-killed"})
    time.sleep(1.5)
    os.kill(old_pid, signal.SIGKILL)
    chat.wait_for(lambda p: len(_replies(p)) > before, 60, "error report")
    report = _replies(chat)[before]
    assert report["kind"] == "agent_error"
    assert "SIGKILL" in report["text"]
    assert report["reply_to"] is not None

    # The bridge restarted the program and answers again.
    chat.wait_for(
        lambda p: pid_file.exists() and pid_file.read_text() not in ("", str(old_pid)),
        60,
        "restart",
    )
    chat.write({"text": "after the kill marker-alive"})
    chat.wait_for(lambda p: len(_replies(p)) > before + 1, 60, "answer after restart")
    assert _replies(chat)[-1]["text"] == "echo:after the kill marker-alive"
    assert setup["bridge"].proc.poll() is None
    setup["sent"] += ["slow:30 marker-killed", "after the kill marker-alive"]


def test_a_revoked_agent_is_cut_off(
    setup: dict[str, Any], world: World, django_db_blocker: Any
) -> None:
    with django_db_blocker.unblock():
        world.revoke(setup["agent"])
    bridge: CliProcess = setup["bridge"]
    bridge.proc.wait(60)
    assert bridge.proc.returncode == 3
    assert "device_revoked" in "".join(bridge.stderr)

    result = world.cli("agent", "status")
    assert result.returncode == 3
    assert "device_revoked" in result.stderr

    # The owner's devices go on without it.
    chat: CliProcess = setup["chat"]
    sent_before = len([line for line in chat.lines if line.get("event") == "sent"])
    chat.write({"text": "after revocation marker-revoked"})
    chat.wait_for(
        lambda p: len([x for x in p.lines if x.get("event") == "sent"]) > sent_before,
        60,
        "send after revocation",
    )
    setup["sent"].append("after revocation marker-revoked")


def _needles(setup: dict[str, Any]) -> dict[str, bytes]:
    needles: dict[str, bytes] = {}
    for text in setup["sent"]:
        if text == PAYLOAD_60K:
            for start in range(0, len(text) - 48, 4096):
                needles[f"payload@{start}"] = text[start : start + 48].encode()
        elif text == MULTILINE:
            for line in text.splitlines()[::50]:
                needles["multiline:" + line[:20]] = line.encode()
        else:
            needles["text:" + text[:30]] = text.encode()
    world: World = setup["world"]
    for i, token in enumerate(world.invite_tokens):
        needles[f"invite secret {i}"] = token.rsplit(".", 1)[1].encode()
        needles[f"invite token {i}"] = token.encode()
    tokens = setup["tokens"] | set(world.tokens_in_profiles())
    assert tokens
    for i, token in enumerate(sorted(tokens)):
        needles[f"access token {i}"] = token.encode()
        needles[f"token signature {i}"] = token.rsplit(".", 1)[1].encode()
    return needles


def _database_haystacks() -> dict[str, bytes]:
    import json

    from django.db import connection

    from tenants.db import role_connection

    haystacks = {}
    with role_connection("operator"), connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        tables = [row[0] for row in cursor.fetchall()]
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}"')
            parts = []
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        parts.append(bytes(value))
                    elif isinstance(value, dict | list):
                        parts.append(json.dumps(value, ensure_ascii=False).encode())
                    elif value is not None:
                        parts.append(str(value).encode())
            haystacks[table] = b"\x00".join(parts)
    return haystacks


def test_no_plaintext_token_or_invite_secret_in_the_database_or_logs(
    setup: dict[str, Any], world: World, django_db_blocker: Any
) -> None:
    needles = _needles(setup)
    with django_db_blocker.unblock():
        haystacks = _database_haystacks()
    haystacks["server log"] = world.server.log_text().encode()

    # The scan reads real rows: ids of the room and devices are found.
    everything = b"".join(haystacks.values())
    for known in (setup["room"], setup["owner_a"], setup["agent"]):
        assert known.encode() in everything
    found = [
        (where, what)
        for where, haystack in haystacks.items()
        for what, needle in needles.items()
        if needle in haystack
    ]
    assert found == []
