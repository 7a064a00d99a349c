"""Real relay workers for scale-out tests: daphne processes on loopback.

Each worker is a separate ``daphne agentvault.asgi:application`` process
sharing the test database (as the app role) and a Redis channel layer with
the test process. Workers are started with their own session and stopped by
their own process ids; their output goes to a log file per worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db import connections

ROOT = Path(__file__).resolve().parents[2]
DAPHNE = str(Path(sys.executable).with_name("daphne"))

# The daphne command line recommended for production (see the report and
# docs): frames a little above the 256 KiB request limit so the relay itself
# answers 4413, sockets recycled well before the channel layer's group
# expiry, keepalive pings.
DAPHNE_OPTIONS = [
    "--websocket_timeout",
    "43200",
    "--websocket_connect_timeout",
    "10",
    "--ping-interval",
    "20",
    "--ping-timeout",
    "30",
    "--websocket-max-message-size",
    str(288 * 1024),
    "--websocket-max-frame-size",
    str(288 * 1024),
    "--application-close-timeout",
    "10",
    "-v",
    "1",
]


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_url() -> str | None:
    """Return the shared Redis URL if a server answers there, else None."""
    import redis

    url = (
        os.environ.get("REDIS_TEST_URL")
        or os.environ.get("REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return url


def _db_url(config: dict[str, Any], name: str) -> str:
    user = quote(str(config.get("USER") or ""), safe="")
    password = config.get("PASSWORD") or ""
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    options = config.get("OPTIONS") or {}
    host = str(config.get("HOST") or options.get("host") or "")
    port = str(config.get("PORT") or options.get("port") or "")
    if host.startswith("/"):
        query = urlencode({"host": host, "port": port} if port else {"host": host})
        return f"postgres://{auth}@/{name}?{query}"
    netloc = f"{host}:{port}" if port else host
    return f"postgres://{auth}@{netloc}/{name}"


def worker_environment(redis: str, **extra: str) -> dict[str, str]:
    """Return the environment of a worker serving the current test database."""
    name = connections["default"].settings_dict["NAME"]
    roles = settings.DATABASE_ROLES
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AV_", "DATABASE_URL", "MIGRATE_", "OPERATOR_", "REDIS"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="agentvault.settings",
        PYTHONPATH=str(ROOT),
        DATABASE_URL=_db_url(roles["app"] or {}, name),
        MIGRATE_DATABASE_URL=_db_url(roles["owner"] or {}, name),
        AV_SECRET_KEY=settings.SECRET_KEY,
        AV_SIGNING_KEY=settings.AGENTVAULT_AUTH["SIGNING_KEYS"][0],
        AV_INVITE_PEPPER=settings.AGENTVAULT["INVITE_PEPPER"],
        REDIS_URL=redis,
        WEB_CONCURRENCY="2",
        AV_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


class Worker:
    """One daphne process."""

    def __init__(self, env: dict[str, str], log_dir: Path, index: int) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"worker{index}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                DAPHNE,
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                *DAPHNE_OPTIONS,
                "agentvault.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def http(self) -> str:
        """Return the worker's HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        """Return the worker's relay URL."""
        return f"ws://127.0.0.1:{self.port}/ws/v1/relay"

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the worker accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log()[-3000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                time.sleep(0.3)
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready:\n{self.log()[-3000:]}")

    def rss_kib(self) -> int:
        """Return the worker's resident memory in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        """Return what the worker wrote so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop this worker by its own process id."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def relay_cluster(n: int, redis: str, **extra: str) -> Iterator[list[Worker]]:
    """Run ``n`` workers for the block; stop them (by pid) afterwards."""
    log_dir = Path(tempfile.mkdtemp(prefix="av-relay-"))
    env = worker_environment(redis, AV_DATA_DIR=str(log_dir), **extra)
    workers: list[Worker] = []
    try:
        for index in range(n):
            workers.append(Worker(env, log_dir, index + 1))
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        if not os.environ.get("AV_KEEP_RELAY_LOGS"):
            shutil.rmtree(log_dir, ignore_errors=True)


class RedisServer:
    """A private redis-server on a free loopback port (never the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="av-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Stop the server by its own process id."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
