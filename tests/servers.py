"""Start real ``daphne`` servers against the test database, for end-to-end tests.

Reuse this module instead of writing another launcher::

    from tests.servers import ServerProcess, server_env

    env = server_env()                   # inside a test with the db set up
    with ServerProcess(env) as server:   # free loopback port, waits for /healthz
        server.url                       # "http://127.0.0.1:<port>"
        server.restart()                 # same port, same log file
        server.log_text()                # everything the server printed

``server_env()`` builds the child's environment from the running Django
settings: ``DATABASE_URL`` (app role) and ``MIGRATE_DATABASE_URL`` (owner
role) pointing at the *current* database name (the test database once
pytest-django set it up), plus ``AV_SECRET_KEY``, ``AV_SIGNING_KEY`` and
``AV_INVITE_PEPPER`` copied from settings, which are required whenever
``DATABASE_URL`` is set. Tokens the test process issues are therefore valid
on the child too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent
DAPHNE = Path(sys.executable).with_name("daphne")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(config: dict[str, Any], *, name: str) -> str:
    """Return a ``postgres://`` URL for a Django database config and db name."""
    user = quote(str(config.get("USER") or ""), safe="")
    password = config.get("PASSWORD")
    auth = user + (":" + quote(str(password), safe="") if password else "")
    options = config.get("OPTIONS") or {}
    host = str(config.get("HOST") or options.get("host") or "")
    port = str(config.get("PORT") or options.get("port") or "")
    if host.startswith("/"):
        query = f"?host={quote(host, safe='/')}" + (f"&port={port}" if port else "")
        return f"postgres://{auth}@/{quote(name, safe='')}{query}"
    netloc = host + (f":{port}" if port else "")
    return f"postgres://{auth}@{netloc}/{quote(name, safe='')}"


def server_env(**extra: str) -> dict[str, str]:
    """Return the environment for a server child on the current database."""
    from django.conf import settings

    name = str(settings.DATABASES["default"]["NAME"])
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="agentvault.settings",
        DATABASE_URL=database_url(settings.DATABASES["default"], name=name),
        MIGRATE_DATABASE_URL=database_url(settings.DATABASE_ROLES["owner"], name=name),
        AV_SECRET_KEY=str(settings.SECRET_KEY),
        AV_SIGNING_KEY=str(settings.AGENTVAULT_AUTH["SIGNING_KEYS"][0]),
        AV_INVITE_PEPPER=str(settings.AGENTVAULT["INVITE_PEPPER"]),
        AV_ENROLL_RATE="1000/m",
        AV_AUTH_RATE="1000/m",
        AV_BUNDLE_RATE="1000/m",
        PYTHONUNBUFFERED="1",
    )
    operator = settings.DATABASE_ROLES.get("operator")
    if operator:
        env["OPERATOR_DATABASE_URL"] = database_url(operator, name=name)
    env.pop("AV_TEST_DB_NAME", None)
    env.update(extra)
    return env


class ServerProcess:
    """One ``daphne`` child on a loopback port, its output kept in a file."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        port: int | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        """Prepare (not start) the server; ``env`` comes from :func:`server_env`."""
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="daphne-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start daphne and wait until ``/healthz`` answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(DAPHNE),
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "--websocket_timeout",
                    "3600",
                    "agentvault.asgi:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Wait until the server answers ``/healthz`` or raise with its log."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"daphne exited with {self.process.returncode}:\n"
                    + self.log_text()[-4000:]
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("daphne did not become ready:\n" + self.log_text()[-4000:])

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop daphne (SIGTERM, then SIGKILL) and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Return everything the server printed so far."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the server."""
        self.stop()
