"""Drive real ``agentvault`` CLI processes against a real server, for e2e tests.

:class:`World` owns one tenant on the server of :mod:`tests.servers`; it
creates invites and approves devices through the server's actions (as an
admin would in the console) and runs every client as a separate
``agentvault`` process with its own profile directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.servers import ServerProcess

AGENTVAULT = Path(sys.executable).with_name("agentvault")


class CliProcess:
    """A long-running ``agentvault`` process whose JSON output lines are kept."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        """Start the process with a pipe on standard input."""
        self.args = args
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                item = json.loads(raw)
            except ValueError:
                item = {"event": "raw", "text": raw.decode("utf-8", "replace")}
            with self._cond:
                self.lines.append(item)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.stderr.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()

    def write(self, item: Any) -> None:
        """Write one JSON line to the process."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(item, ensure_ascii=False).encode() + b"\n")
        self.proc.stdin.flush()

    def messages(self) -> list[dict[str, Any]]:
        """Return the ``message`` events received so far."""
        with self._cond:
            return [line for line in self.lines if line.get("event") == "message"]

    def wait_for(
        self, predicate: Callable[[CliProcess], bool], timeout: float, what: str = ""
    ) -> None:
        """Wait until ``predicate(self)`` holds, or fail with the process's output."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what or 'output'} from "
                        f"{' '.join(self.args[3:6])}; stderr tail:\n"
                        + "".join(self.stderr[-20:])
                    )
                self._cond.wait(min(left, 1.0))

    def stop(self) -> None:
        """Close standard input and end the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class World:
    """One tenant with its owner admin, on a running server, driven by the CLI."""

    def __init__(self, server: ServerProcess, home: Path) -> None:
        """Create the tenant and keep the server and profile directory."""
        from tenants.actions import do_create_tenant

        self.server = server
        self.home = home
        slug = "e2e-" + uuid.uuid4().hex[:8]
        self.tenant, self.owner, _ = do_create_tenant(
            name="End to end", slug=slug, admin_username=slug
        )
        self.invite_tokens: list[str] = []
        self.processes: list[CliProcess] = []

    # -- admin side (server actions) ------------------------------------------

    def invite(self, *, member: Any = None, name: str = "", kind: str = "") -> str:
        """Create an invite and return its token."""
        from enrollment.actions import do_create_invite
        from tenants.models import Member

        role = ""
        if member is None:
            role = Member.Role.AGENT if kind == "agent" else "member"
        created = do_create_invite(
            tenant_id=self.tenant.pk,
            acting=self.owner,
            member=member,
            name=name,
            kind=kind,
            role=role,
        )
        self.invite_tokens.append(created.token)
        return created.token

    def _device(self, device_id: str) -> Any:
        from enrollment.models import Device
        from tenants.scope import tenant_scope

        with tenant_scope(self.tenant.pk):
            return Device.objects.select_related("member").get(pk=device_id)

    def approve(self, device_id: str) -> None:
        """Approve a pending device, as an admin does."""
        from enrollment.actions import do_approve_device

        do_approve_device(self._device(device_id), acting=self.owner)

    def revoke(self, device_id: str) -> None:
        """Revoke a device."""
        from enrollment.actions import do_revoke_device

        do_revoke_device(self._device(device_id), acting=self.owner)

    def member_of(self, device_id: str) -> Any:
        """Return the member of a device."""
        return self._device(device_id).member

    def create_room(self, name: str, members: list[Any]) -> str:
        """Create a room with ``members``; return its id."""
        from messaging.actions import do_create_room
        from tenants.scope import tenant_scope

        with tenant_scope(self.tenant.pk):
            room = do_create_room(
                name, tenant_id=self.tenant.pk, members=members, acting=self.owner
            )
        return str(room.pk)

    # -- client side (CLI processes) --------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """Return the environment of a CLI process."""
        env = dict(os.environ)
        env.update(AGENTVAULT_HOME=str(self.home), PYTHONUNBUFFERED="1", **extra)
        for name in ("DATABASE_URL", "MIGRATE_DATABASE_URL", "AV_TEST_DB_NAME"):
            env.pop(name, None)
        return env

    def cli(
        self, profile: str, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run one CLI command to completion."""
        return subprocess.run(
            [str(AGENTVAULT), "--profile", profile, *args],
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, profile: str, *args: str, **env: str) -> CliProcess:
        """Start a long-running CLI command."""
        process = CliProcess(
            [str(AGENTVAULT), "--profile", profile, *args], self.env(**env)
        )
        self.processes.append(process)
        return process

    def enroll(self, profile: str, token: str, *, name: str) -> str:
        """Enroll a profile through the CLI, approve it, and return the device id."""
        proc = subprocess.Popen(
            [
                str(AGENTVAULT),
                "--profile",
                profile,
                "enroll",
                "--server",
                self.server.url,
                "--name",
                name,
                "--poll-interval",
                "0.3",
                "--timeout",
                "60",
            ],
            env=self.env(AGENTVAULT_INVITE=token),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.startswith("Enrolled device "):
            proc.kill()
            raise AssertionError(f"enroll failed: {first}{proc.communicate()[1]}")
        device_id = first.split()[2]
        self.approve(device_id)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Approved" in out
        return device_id

    def close(self) -> None:
        """Stop every CLI process; with AV_E2E_DEBUG, show what they printed."""
        for process in self.processes:
            process.stop()
            if os.environ.get("AV_E2E_DEBUG"):
                sys.stderr.write(
                    f"--- {' '.join(process.args[1:6])} exited "
                    f"{process.proc.returncode}:\n" + "".join(process.stderr[-40:])
                )

    def tokens_in_profiles(self) -> list[str]:
        """Return every access token cached in the profiles."""
        tokens = []
        for path in self.home.glob("*/token.json"):
            tokens.append(json.loads(path.read_text())["access_token"])
        return tokens
