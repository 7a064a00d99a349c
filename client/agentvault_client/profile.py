"""Keep a device's local profile: server URL, device id, keys and lock.

A profile is a directory ``<home>/<name>`` where ``<home>`` is
``$AGENTVAULT_HOME`` (read when a profile is opened, never at import) or
``~/.agentvault``. It holds:

- ``profile.json``: server URL, device, member and tenant ids, device name;
- ``store.db`` and ``storage.key``: the crypto store and its key file;
- ``messages.db``: received messages, sealed under the same storage key;
- ``token.json``: the current access token and its expiry (15 minutes);
- ``lock``: serialises processes that use the same device.

The directory is 0700 and every file 0600: anyone who can read them can act
as the device.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from agentvault_client.errors import NotEnrolledError, ProfileError

__all__ = [
    "DEFAULT_PROFILE",
    "Profile",
    "ProfileLock",
    "home_dir",
]

DEFAULT_PROFILE = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def home_dir() -> Path:
    """Return the directory that holds every profile."""
    configured = os.environ.get("AGENTVAULT_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".agentvault"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclasses.dataclass
class Profile:
    """One local device profile; ``config`` mirrors ``profile.json``."""

    name: str
    path: Path
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        """Return the name and path only."""
        return f"Profile(name={self.name!r}, path={str(self.path)!r})"

    # -- opening ------------------------------------------------------------

    @classmethod
    def locate(
        cls, name: str = DEFAULT_PROFILE, *, home: Path | None = None
    ) -> Profile:
        """Return the profile ``name`` without touching the disk."""
        if not _NAME.match(name):
            raise ProfileError(
                "A profile name is 1 to 64 letters, digits, '.', '_' or '-'."
            )
        return cls(name, (home or home_dir()) / name)

    @classmethod
    def create(
        cls, name: str = DEFAULT_PROFILE, *, server_url: str, home: Path | None = None
    ) -> Profile:
        """Create an empty profile directory (0700) bound to ``server_url``."""
        profile = cls.locate(name, home=home)
        if profile.config_path.exists():
            raise ProfileError(
                f"Profile {name!r} exists already at {profile.path}; "
                "choose another --profile."
            )
        profile.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        profile.path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(profile.path, 0o700)
        profile.config = {"version": 1, "server_url": server_url.rstrip("/")}
        profile.save()
        return profile

    @classmethod
    def load(cls, name: str = DEFAULT_PROFILE, *, home: Path | None = None) -> Profile:
        """Load an existing profile; refuse one other users can read."""
        profile = cls.locate(name, home=home)
        if not profile.config_path.exists():
            raise NotEnrolledError(
                f"No profile {name!r} in {profile.path.parent}; "
                "run 'agentvault enroll' first."
            )
        mode = profile.path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise ProfileError(
                f"{profile.path} is accessible to other users; run chmod 700 on it."
            )
        try:
            profile.config = json.loads(profile.config_path.read_text("utf-8"))
        except (OSError, ValueError):
            raise ProfileError(f"{profile.config_path} cannot be read.") from None
        return profile

    # -- files --------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """Return the path of ``profile.json``."""
        return self.path / "profile.json"

    @property
    def store_path(self) -> Path:
        """Return the path of the crypto store."""
        return self.path / "store.db"

    @property
    def key_path(self) -> Path:
        """Return the path of the storage key file."""
        return self.path / "storage.key"

    @property
    def messages_path(self) -> Path:
        """Return the path of the received-message log."""
        return self.path / "messages.db"

    @property
    def token_path(self) -> Path:
        """Return the path of the cached access token."""
        return self.path / "token.json"

    def save(self) -> None:
        """Write ``profile.json`` (0600)."""
        data = json.dumps(self.config, indent=2, sort_keys=True) + "\n"
        _write_private(self.config_path, data.encode("utf-8"))

    # -- fields -------------------------------------------------------------

    @property
    def server_url(self) -> str:
        """Return the server's base URL."""
        return str(self.config["server_url"])

    @property
    def device_id(self) -> str | None:
        """Return the enrolled device id, if any."""
        value = self.config.get("device_id")
        return None if value is None else str(value)

    def require_device_id(self) -> str:
        """Return the device id or raise :class:`NotEnrolledError`."""
        device_id = self.device_id
        if device_id is None:
            raise NotEnrolledError()
        return device_id

    # -- cached token -------------------------------------------------------

    def read_token(self, *, min_validity: float = 60.0) -> str | None:
        """Return the cached access token if it stays valid ``min_validity`` s."""
        try:
            data = json.loads(self.token_path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("device_id") != self.device_id:
            return None
        if float(data.get("expires_at", 0)) - time.time() < min_validity:
            return None
        token = data.get("access_token")
        return token if isinstance(token, str) else None

    def write_token(self, token: str, expires_in: float) -> None:
        """Cache an access token (0600) until shortly before it expires."""
        data = {
            "device_id": self.device_id,
            "access_token": token,
            "expires_at": time.time() + float(expires_in),
        }
        _write_private(self.token_path, json.dumps(data).encode("utf-8"))

    def forget_token(self) -> None:
        """Delete the cached access token."""
        try:
            self.token_path.unlink()
        except FileNotFoundError:
            pass


class ProfileLock:
    """Serialise the processes that use one profile's device state.

    The crypto store keeps session state in memory, so only one process may
    change it at a time. The lock is held for short sections only (one send,
    one batch of received envelopes), so ``listen`` and ``send`` can run side
    by side. :meth:`acquire` tells whether another process held the lock
    since this one last did, in which case the caller reloads its state.
    """

    def __init__(self, path: Path) -> None:
        """Prepare the lock file at ``path`` (created 0600 on first use)."""
        self._path = path
        self._fd: int | None = None
        self._mark = f"{os.getpid()}.{time.monotonic_ns()}"
        self._last: str | None = None

    def try_acquire(self) -> bool | None:
        """Take the lock without waiting.

        Return None when another process holds it, else whether someone
        else held it since this process last did.
        """
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        self._fd = fd
        seen = os.pread(fd, 128, 0).decode("ascii", "replace").strip()
        changed = seen != self._last
        self._last = f"{self._mark}.{time.monotonic_ns()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._last.encode("ascii"), 0)
        return changed

    def release(self) -> None:
        """Release the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
