"""Relay benchmark: the product relay beside a bare Channels and a raw relay.

Run from the project root (needs Redis at REDIS_URL or 127.0.0.1:6379)::

    .venv/bin/python bench/relay.py                 # about 3-4 minutes
    .venv/bin/python bench/relay.py --pairs 1 10 --window 3 --rounds 1

It builds a scratch installation (embedded PostgreSQL under a temporary
``AV_DATA_DIR``, migrated; one tenant with ``max(pairs)`` owner-agent rooms,
each member with one active device and a token), then measures, one server
configuration at a time:

- ``product``: the real server (daphne workers of ``agentvault.asgi``, Redis
  channel layer, PostgreSQL), 1 and 2 workers. Each pair's sender sends
  ``send`` frames (one 1 KiB ciphertext for the receiving device) over an
  authenticated socket; the receiver gets the ``envelope`` and acknowledges
  every 16. With 2 workers the sender and receiver of a pair sit on
  different workers, so every message crosses Redis.
- ``bare``: daphne + Channels + the same Redis layer, no auth, no database:
  a sender's binary frame is ``group_send`` to its receiver
  (``bench/relay_baselines.py``), 1 and 2 workers.
- ``raw``: a plain ``websockets`` server forwarding frames in-process.

Closed loop: each pair keeps one 1 KiB message in flight; after a warm-up,
messages delivered inside the window are counted. Printed per configuration
and pair count: msgs/s and latency p50/p99 (send to receipt), as the median
over ``--rounds`` interleaved rounds, plus the product's ratio to the bare
relay with the same number of workers. The product's send and frame rate
limits are raised for the run (``AV_SEND_RATE``, ``AV_RELAY_FRAME_RATE``),
since one pair sends faster than the defaults (50 sends/s, 100 frames/s).
"""

# ruff: noqa: T201  (a benchmark reports on stdout)

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZE = 1024
# One pair sends faster than a device may by default (50 sends/s, 100
# frames/s per socket): the limits are raised for the run.
PRODUCT_LIMITS = {"AV_SEND_RATE": "1000000", "AV_RELAY_FRAME_RATE": "1000000"}
HEADER = struct.Struct("!IQd")  # pair, sequence, send time


@dataclass
class Pair:
    """One sender-receiver pair of the product relay."""

    room_id: str
    sender_token: str
    receiver_token: str
    receiver_device: str


@dataclass
class Result:
    """One measured run."""

    config: str
    pairs: int
    rate: float
    p50: float
    p99: float
    lost: int


# --- Scratch installation -------------------------------------------------------


def scratch(data_dir: str) -> None:
    """Point this process at a fresh embedded database under ``data_dir``."""
    for name in (
        "DATABASE_URL",
        "MIGRATE_DATABASE_URL",
        "OPERATOR_DATABASE_URL",
        "REDIS_URL",
        "WEB_CONCURRENCY",
        "AV_TEST_DB_NAME",
    ):
        os.environ.pop(name, None)
    os.environ["AV_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "agentvault.settings"


def seed(count: int) -> list[Pair]:
    """Create ``count`` owner-agent rooms with one device per member."""
    from agentvault.auth.tokens import get_registry
    from enrollment.models import Device
    from messaging.models import Room, RoomMembership
    from tenants.models import Member, Tenant
    from tenants.scope import tenant_scope

    issuer = get_registry().builtin
    tenant = Tenant.objects.create(name="Bench", slug="bench-relay")
    pairs = []
    with tenant_scope(tenant.pk):
        for index in range(count):
            owner = Member.objects.create(tenant=tenant, name=f"owner {index}")
            agent = Member.objects.create(
                tenant=tenant, name=f"agent {index}", kind="agent", role="agent"
            )
            devices = []
            for member in (owner, agent):
                key = os.urandom(32)
                devices.append(
                    Device.objects.create(
                        tenant=tenant,
                        member=member,
                        name="bench",
                        identity_key=key,
                        fingerprint=key.hex()[:40],
                        status=Device.Status.ACTIVE,
                    )
                )
            room = Room.objects.create(tenant=tenant, name=f"pair {index}")
            for member in (owner, agent):
                RoomMembership.objects.create(tenant=tenant, room=room, member=member)
            tokens = [
                issuer.issue(
                    device_id=d.pk, member_id=d.member_id, tenant_id=tenant.pk
                )[0]
                for d in devices
            ]
            pairs.append(Pair(str(room.pk), tokens[0], tokens[1], str(devices[1].pk)))
    return pairs


def analyze() -> None:
    """Give the planner the statistics a live database has (autovacuum
    gathers them within a minute of the seeding; without them the first
    plans misjudge the tables as empty)."""
    import psycopg
    from django.conf import settings

    owner = settings.DATABASE_ROLES["owner"]
    params = {
        "dbname": owner["NAME"],
        "user": owner["USER"],
        "password": owner["PASSWORD"] or None,
        "host": owner["HOST"] or None,
        "port": owner["PORT"] or None,
        **owner["OPTIONS"],
    }
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("ANALYZE")


# --- Load generator -------------------------------------------------------------


def _payload(pair: int, seq: int) -> bytes:
    head = HEADER.pack(pair, seq, time.perf_counter())
    return head + os.urandom(SIZE - len(head))


Connect = Callable[[int], Awaitable[tuple[Any, Any]]]


async def closed_loop(
    connect: Connect,
    send: Callable[[Any, int, int], Awaitable[None]],
    receive: Callable[[Any], Awaitable[bytes | None]],
    pairs: int,
    *,
    warmup: float,
    window: float,
) -> tuple[float, list[float], int]:
    """Run ``pairs`` closed loops; return (msgs/s, latencies in ms, stuck)."""
    sockets = [await connect(index) for index in range(pairs)]
    start = time.perf_counter() + warmup
    end = start + window
    latencies: list[float] = []
    delivered = 0
    stuck = 0

    async def loop(index: int) -> None:
        nonlocal delivered, stuck
        sender, receiver = sockets[index]
        seq = 0
        while time.perf_counter() < end:
            seq += 1
            await send(sender, index, seq)
            try:
                while True:
                    data = await asyncio.wait_for(receive(receiver), 15)
                    if data is None:
                        continue
                    got_pair, got_seq, sent_at = HEADER.unpack_from(data)
                    if (got_pair, got_seq) == (index, seq):
                        break
            except TimeoutError:
                stuck += 1
                return
            now = time.perf_counter()
            if start <= now <= end:
                delivered += 1
                latencies.append((now - sent_at) * 1000)

    await asyncio.gather(*(loop(index) for index in range(pairs)))
    for sender, receiver in sockets:
        for ws in (sender, receiver):
            with contextlib.suppress(Exception):
                ws.transport.abort()
    return delivered / window, latencies, stuck


async def _connect(url: str, **kwargs: Any) -> Any:
    from websockets.asyncio.client import connect

    return await connect(
        url, compression=None, max_queue=None, open_timeout=30, **kwargs
    )


def plain_adapter(urls: list[str]) -> tuple[Connect, Any, Any]:
    """Adapter for the raw and bare relays (binary frames, no auth)."""

    async def connect(index: int) -> tuple[Any, Any]:
        receiver = await _connect(
            f"{urls[(index + 1) % len(urls)]}?role=recv&pair={index}"
        )
        sender = await _connect(f"{urls[index % len(urls)]}?role=send&pair={index}")
        await asyncio.sleep(0)
        return sender, receiver

    async def send(ws: Any, index: int, seq: int) -> None:
        await ws.send(_payload(index, seq))

    async def receive(ws: Any) -> bytes | None:
        data = await ws.recv()
        return data if isinstance(data, bytes) else None

    return connect, send, receive


def product_adapter(urls: list[str], pairs: list[Pair]) -> tuple[Connect, Any, Any]:
    """Adapter for the real relay: authenticated JSON frames, acks every 16."""
    counters: dict[int, int] = {}

    async def connect(index: int) -> tuple[Any, Any]:
        pair = pairs[index]
        receiver = await _connect(
            urls[(index + 1) % len(urls)],
            additional_headers={"Authorization": f"Bearer {pair.receiver_token}"},
            origin="http://127.0.0.1",
        )
        while json.loads(await receiver.recv())["type"] != "queue_empty":
            pass
        sender = await _connect(
            urls[index % len(urls)],
            additional_headers={"Authorization": f"Bearer {pair.sender_token}"},
            origin="http://127.0.0.1",
        )
        while json.loads(await sender.recv())["type"] != "queue_empty":
            pass
        sender.bench_index = index
        asyncio.get_running_loop().create_task(_drain(sender))
        return sender, receiver

    async def _drain(ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    async def send(ws: Any, index: int, seq: int) -> None:
        pair = pairs[index]
        frame = {
            "type": "send",
            "room_id": pair.room_id,
            "client_message_id": f"{index}-{seq}-{time.time_ns()}",
            "envelopes": [
                {
                    "device_id": pair.receiver_device,
                    "ciphertext": base64.b64encode(_payload(index, seq)).decode(),
                }
            ],
        }
        await ws.send(json.dumps(frame))

    async def receive(ws: Any) -> bytes | None:
        frame = json.loads(await ws.recv())
        if frame.get("type") != "envelope":
            return None
        key = id(ws)
        counters[key] = counters.get(key, 0) + 1
        if counters[key] % 16 == 0:
            await ws.send(json.dumps({"type": "ack", "up_to_seq": frame["seq"]}))
        return base64.b64decode(frame["ciphertext"])

    return connect, send, receive


# --- Servers ------------------------------------------------------------------------


@contextlib.contextmanager
def raw_server() -> Any:
    """Run the raw websockets relay; yield its URL list."""
    from messaging.tests.cluster import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "relay_baselines.py"), "raw", str(port)],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        _wait(port, proc)
        yield [f"ws://127.0.0.1:{port}/relay"]
    finally:
        _stop(proc)


@contextlib.contextmanager
def bare_servers(count: int, redis: str) -> Any:
    """Run ``count`` daphne workers of the bare Channels relay."""
    from messaging.tests.cluster import DAPHNE, free_port

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["BENCH_REDIS_URL"] = redis
    env["PYTHONPATH"] = str(ROOT)
    procs = []
    try:
        urls = []
        for _ in range(count):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        DAPHNE,
                        "-b",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-v",
                        "0",
                        "bench.relay_baselines:bare_application",
                    ],
                    cwd=ROOT,
                    env=env,
                    start_new_session=True,
                )
            )
            urls.append(f"ws://127.0.0.1:{port}/relay")
            _wait(port, procs[-1])
        yield urls
    finally:
        for proc in procs:
            _stop(proc)


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            time.sleep(0.5)
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- Orchestration ------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    config: str, adapter: tuple[Connect, Any, Any], counts: list[int], args: Any
) -> list[Result]:
    """Run every pair count against one running configuration."""
    results = []
    for count in counts:
        rate, latencies, stuck = asyncio.run(
            closed_loop(*adapter, count, warmup=args.warmup, window=args.window)
        )
        result = Result(
            config,
            count,
            rate,
            _percentile(latencies, 0.50),
            _percentile(latencies, 0.99),
            stuck,
        )
        print(
            f"  {config:<16} {count:>4} pairs  {rate:>8.0f} msgs/s  "
            f"p50 {result.p50:7.2f} ms  p99 {result.p99:7.2f} ms  stuck {stuck}",
            flush=True,
        )
        results.append(result)
    return results


def main() -> None:
    """Build the scratch installation, run every configuration, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], choices=[1, 2]
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["raw", "bare", "product"],
        default=["raw", "bare", "product"],
        help="configurations to run (diagnostics; the goals need all three)",
    )
    args = parser.parse_args()

    redis = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    data_dir = tempfile.mkdtemp(prefix="av-bench-relay-")
    scratch(data_dir)
    try:
        import django
        from django.core.management import call_command

        django.setup()
        print(f"scratch database under {data_dir}; migrating", flush=True)
        call_command("migrate", verbosity=0)
        pairs = seed(max(args.pairs))
        analyze()

        from messaging.tests.cluster import relay_cluster

        all_results: list[Result] = []
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}", flush=True)
            if "raw" in args.only:
                with raw_server() as urls:
                    all_results += measure(
                        "raw websockets", plain_adapter(urls), args.pairs, args
                    )
            for workers in args.workers:
                if "bare" in args.only:
                    with bare_servers(workers, redis) as urls:
                        adapter = plain_adapter(urls)
                        all_results += measure(
                            f"bare channels x{workers}", adapter, args.pairs, args
                        )
                if "product" not in args.only:
                    continue
                with relay_cluster(workers, redis, **PRODUCT_LIMITS) as running:
                    adapter = product_adapter([w.ws for w in running], pairs)
                    all_results += measure(
                        f"product x{workers}", adapter, args.pairs, args
                    )
        report(all_results, args.pairs)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with contextlib.suppress(Exception):
            from agentvault.embedded import stop_embedded_postgres

            stop_embedded_postgres(Path(data_dir))
        shutil.rmtree(data_dir, ignore_errors=True)


def report(results: list[Result], counts: list[int]) -> None:
    """Print the medians and the product/bare ratios."""
    configs = list(dict.fromkeys(r.config for r in results))
    print()
    print(
        "| Configuration | Pairs | msgs/s | p50 ms | p99 ms | stuck "
        "| × bare (same workers) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians: dict[tuple[str, int], tuple[float, float, float, int]] = {}
    for config in configs:
        for count in counts:
            runs = [r for r in results if r.config == config and r.pairs == count]
            medians[(config, count)] = (
                statistics.median(r.rate for r in runs),
                statistics.median(r.p50 for r in runs),
                statistics.median(r.p99 for r in runs),
                sum(r.lost for r in runs),
            )
    for config in configs:
        for count in counts:
            rate, p50, p99, stuck = medians[(config, count)]
            ratio = ""
            if config.startswith("product"):
                bare = medians.get((config.replace("product", "bare channels"), count))
                if bare and bare[0]:
                    ratio = f"{rate / bare[0]:.2f}"
            print(
                f"| {config} | {count} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | "
                f"{stuck} | {ratio} |"
            )


if __name__ == "__main__":
    main()
