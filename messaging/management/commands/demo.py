"""``manage.py demo``: the main job end to end, on the embedded defaults.

Starts (or reuses) the embedded PostgreSQL, migrates, creates a tenant with
an owner admin, serves the API and relay with daphne on a free loopback
port, enrolls an owner device and an agent device through real ``agentvault``
processes, approves them after comparing fingerprints, runs
``examples/machine_agent.py`` behind ``agentvault agent run``, has the owner
ask it questions (several scripts and emoji, a long multi-line text, a
60 KiB payload), scans every text and binary column of the database for
the plaintexts, revokes the agent's device, and verifies the audit chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

ROOT = Path(settings.BASE_DIR)
AGENTVAULT = Path(sys.executable).with_name("agentvault")
DAPHNE = Path(sys.executable).with_name("daphne")

QUESTIONS = [
    "help",
    "time",
    "uptime",
    "load",
    "disk /",
    "memory",
    "processes",
    "Hello from the owner! 👋🤖",
    "Привет! Как дела у сервера?",
    "こんにちは、調子はどう？",
    "مرحبا، كيف حال الخادم؟",
    "नमस्ते, सर्वर कैसा है?",
    "你好，服务器怎么样？🐉",
    "Family emoji 👨‍👩‍👧‍👦 and flags 🏳️‍🌈🇯🇵",
]
MULTILINE = "\n".join(
    f"Line {i:03d} of a long report: everything nominal, fans at {40 + i % 20}% — ok"
    for i in range(200)
)
PAYLOAD = ("AgentVault-demo-payload-" + "x" * 1000 + "\n") * 60
PAYLOAD = PAYLOAD[: 60 * 1024]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Proc:
    """A child process whose output lines are queued as they arrive."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 - closed with the process
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float) -> str:
        return self.lines.get(timeout=timeout)

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Command(BaseCommand):
    """Run the main job end to end and explain each step."""

    help = "Run the AgentVault demo end to end on the embedded defaults."

    def add_arguments(self, parser: Any) -> None:
        """Declare the command's options."""
        parser.add_argument(
            "--keep-running",
            action="store_true",
            help="Leave the server running at the end (Ctrl-C stops it).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run every step; stop every child process on the way out."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.workdir = Path(settings.DATA_DIR) / "demo" / stamp
        self.workdir.mkdir(parents=True, mode=0o700)
        os.chmod(self.workdir, 0o700)
        self.children: list[_Proc] = []
        self.server: subprocess.Popen[bytes] | None = None
        # The server's own JSON logs go to its log file; keep this screen readable.
        logging.disable(logging.INFO)
        try:
            self._run(options)
        finally:
            logging.disable(logging.NOTSET)
            for child in self.children:
                child.stop()
            if self.server is not None and not options["keep_running"]:
                self.server.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.server.wait(15)

    # -- output helpers ---------------------------------------------------------

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n== {text}"))

    def say(self, text: str) -> None:
        self.stdout.write(f"   {text}")

    def ok(self, text: str) -> None:
        self.stdout.write(self.style.SUCCESS(f"   ✓ {text}"))

    # -- the demo ---------------------------------------------------------------

    def _run(self, options: dict[str, Any]) -> None:
        from enrollment.actions import (
            do_approve_device,
            do_create_invite,
            do_revoke_device,
        )
        from enrollment.models import Device
        from messaging.actions import do_create_room
        from tenants.actions import do_create_tenant
        from tenants.scope import tenant_scope

        self.step("Database: embedded PostgreSQL, migrations")
        db = settings.DATABASES["default"]
        self.say(
            f"database {db['NAME']} ({'embedded' if settings.EMBEDDED else 'external'})"
        )
        call_command("migrate", verbosity=0)
        self.ok("migrated")

        self.step("Tenant with an owner admin")
        slug = f"demo-{uuid.uuid4().hex[:6]}"
        tenant, owner, password = do_create_tenant(
            name="Demo tenant", slug=slug, admin_username=slug
        )
        self.ok(f"tenant {tenant.slug} ({tenant.pk}); owner admin {owner.name}")
        self.say(f"console login: {slug} / {password}")

        self.step("Server: daphne on a free loopback port")
        url = self._start_server()
        self.ok(f"serving HTTP and the WebSocket relay at {url}")

        self.step("Invites and enrollment through the agentvault CLI")
        with tenant_scope(tenant.pk):
            owner_invite = do_create_invite(
                tenant_id=tenant.pk, acting=owner, member=owner
            )
            agent_invite = do_create_invite(
                tenant_id=tenant.pk,
                acting=owner,
                name="machine-agent",
                kind="agent",
                role="agent",
            )
        self.secrets = [owner_invite.token, agent_invite.token]
        self.say("two invites created; each token is shown once and only its hash kept")

        def approve(device_id: str, shown: str) -> Device:
            with tenant_scope(tenant.pk):
                device = Device.objects.get(pk=device_id)
                if device.fingerprint != shown:
                    raise CommandError("The fingerprints differ; not approving.")
                return do_approve_device(device, acting=owner)

        self._enroll("owner", owner_invite.token, "owner-laptop", url, approve)
        agent_device = self._enroll(
            "agent", agent_invite.token, "agent-host", url, approve
        )

        self.step("A room with the owner and the agent")
        with tenant_scope(tenant.pk):
            agent_member = Device.objects.get(pk=agent_device).member
            room = do_create_room(
                "demo", tenant_id=tenant.pk, members=[owner, agent_member], acting=owner
            )
        self.ok(f"room demo ({room.pk})")

        self.step("The agent: examples/machine_agent.py behind `agentvault agent run`")
        bridge = self._spawn(
            "agent",
            "agent",
            "run",
            "--room",
            "demo",
            "--mode",
            "lines",
            "--",
            sys.executable,
            str(ROOT / "examples" / "machine_agent.py"),
            "--lines",
        )
        chat = self._spawn("owner", "chat", "--room", "demo", "--json")
        self.ok("bridge running; the owner's chat is open")

        self.step("The owner asks; the agent answers (end-to-end encrypted)")
        texts = [*QUESTIONS, MULTILINE, PAYLOAD]
        for text in texts:
            answer = self._ask(chat, text)
            shown = text if len(text) <= 50 else f"{text[:40]}... ({len(text)} chars)"
            self.say(f"owner: {shown}".replace("\n", " / "))
            for line in answer.splitlines()[:6]:
                self.say(f"  agent: {line}")
        digest = hashlib.sha256(PAYLOAD.encode()).hexdigest()[:16]
        if digest not in self.last_answer:
            raise CommandError("The 60 KiB payload's hash does not match.")
        self.ok(
            f"{len(texts)} answers; the 60 KiB payload arrived intact (sha256 {digest})"
        )

        self.step("The database holds no plaintext")
        tables, columns, rows, found = self._scan(texts)
        if found:
            raise CommandError(f"Plaintext found in the database: {found}")
        self.ok(
            f"scanned {rows} rows of {columns} text/binary columns in {tables} tables: "
            "no message text, no invite secret"
        )

        self.step("Revoking the agent's device")
        with tenant_scope(tenant.pk):
            do_revoke_device(Device.objects.get(pk=agent_device), acting=owner)
        try:
            bridge.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise CommandError("The revoked agent kept running.") from None
        self.ok(f"the bridge was cut off (exit code {bridge.proc.returncode})")
        status = subprocess.run(
            [str(AGENTVAULT), "--profile", "agent", "status"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.say("agentvault --profile agent status -> " + status.stderr.strip())
        chat.write(json.dumps({"text": "Are you still there?"}))
        event = json.loads(chat.next_line(60))
        self.ok(f"the owner still sends ({event['event']}); nobody answers any more")

        self.step("Audit chain")
        call_command("audit_verify", tenant=slug, stdout=self.stdout)

        self.step("Where to look next")
        self.say(f"profiles, logs:   {self.workdir}")
        self.say(f"audit trail:      python manage.py audit_export --tenant {slug}")
        self.say(f"devices:          python manage.py list_devices --tenant {slug}")
        self.say("console:          make serve, then http://127.0.0.1:8000/admin/")
        self.say(f"                  (login {slug} / {password})")
        self.say("your own agent:   agentvault --help ; examples/machine_agent.py")
        self.stdout.write(self.style.SUCCESS("\nDemo complete."))
        if options["keep_running"] and self.server is not None:
            self.say(f"server still running at {url}; Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                self.server.wait()

    # -- steps ---------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(AGENTVAULT_HOME=str(self.workdir / "profiles"), **extra)
        return env

    def _start_server(self) -> str:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - child keeps it
        self.server = subprocess.Popen(
            [
                str(DAPHNE),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "agentvault.asgi:application",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise CommandError(f"daphne exited; see {self.workdir / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return url
            time.sleep(0.3)
        raise CommandError(f"daphne did not start; see {self.workdir / 'server.log'}")

    def _spawn(self, profile: str, *args: str) -> _Proc:
        child = _Proc(
            [str(AGENTVAULT), "--profile", profile, *args],
            self._env(),
            self.workdir / f"{profile}-{args[0]}.log",
        )
        self.children.append(child)
        return child

    def _enroll(
        self, profile: str, token: str, name: str, url: str, approve: Any
    ) -> str:
        self.say(
            f"$ agentvault --profile {profile} enroll --server {url} --name {name}"
        )
        child = _Proc(
            [
                str(AGENTVAULT),
                "--profile",
                profile,
                "enroll",
                "--server",
                url,
                "--name",
                name,
                "--poll-interval",
                "0.5",
            ],
            self._env(AGENTVAULT_INVITE=token),
            self.workdir / f"{profile}-enroll.log",
        )
        self.children.append(child)
        first = child.next_line(60)
        if not first.startswith("Enrolled device"):
            raise CommandError(f"Enrollment failed: {first}")
        device_id = first.split()[2]
        shown = child.next_line(10).removeprefix("Fingerprint: ")
        self.say(f"  device {device_id} is pending; it shows fingerprint {shown}")
        for _ in range(2):
            self.say(f"  {child.next_line(10)}")
        time.sleep(1.0)  # let the waiting indicator show in the log
        approve(device_id, shown)
        self.say("  admin compared the fingerprint with the console and approved")
        if child.proc.wait(60) != 0:
            raise CommandError(f"Enrollment of {profile} failed; see its log.")
        while not child.lines.empty():
            line = child.lines.get()
            if line:
                self.say(f"  {line}")
        self.ok(f"{profile} device active")
        return device_id

    def _ask(self, chat: _Proc, text: str) -> str:
        chat.write(json.dumps({"text": text}, ensure_ascii=False))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            event = json.loads(chat.next_line(60))
            if event.get("event") == "message" and not event.get("outgoing"):
                self.last_answer: str = str(event["text"])
                return self.last_answer
            if event.get("event") == "error":
                raise CommandError(f"Sending failed: {event.get('code')}")
        raise CommandError("No answer from the agent within 60 s.")

    def _scan(self, texts: list[str]) -> tuple[int, int, int, list[str]]:
        """Search every text, binary and JSON column for the plaintexts."""
        from django.db import connection

        from tenants.db import role_connection

        needles = [t.encode() for t in texts if len(t) >= 8 and len(t) < 2000]
        needles += [PAYLOAD[i : i + 64].encode() for i in range(0, len(PAYLOAD), 8192)]
        needles += [MULTILINE.splitlines()[i].encode() for i in range(0, 200, 40)]
        needles += [token.rsplit(".", 1)[1].encode() for token in self.secrets]
        found: list[str] = []
        rows = 0
        with role_connection("operator"), connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type IN "
                "('text', 'character varying', 'bytea', 'jsonb', 'json')"
            )
            by_table: dict[str, list[str]] = {}
            for table, column in cursor.fetchall():
                by_table.setdefault(table, []).append(column)
            for table, columns in by_table.items():
                names = ", ".join(f'"{c}"' for c in columns)
                cursor.execute(f'SELECT {names} FROM "{table}"')
                for row in cursor.fetchall():
                    rows += 1
                    for column, value in zip(columns, row, strict=True):
                        if value is None:
                            continue
                        if isinstance(value, str):
                            data = value.encode()
                        elif isinstance(value, bytes | memoryview):
                            data = bytes(value)
                        else:
                            data = json.dumps(value, ensure_ascii=False).encode()
                        for needle in needles:
                            if needle in data:
                                found.append(f"{table}.{column}")
        column_count = sum(len(c) for c in by_table.values())
        return len(by_table), column_count, rows, sorted(set(found))
