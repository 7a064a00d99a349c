"""Keep a device's keys, sessions, trust decisions and outbox in SQLite.

Secrets are sealed with XChaCha20-Poly1305 under a 32-byte storage key. The
key comes from a passphrase through Argon2id, or from a key file that only
its owner may read (mode 0600 or stricter). Each sealed value is bound to its
table and row through the associated data, so rows cannot be swapped.

Atomicity rules:

- decrypt runs on the in-memory record without changing it; only after the
  tag verified does one transaction store the new record, the skipped-key
  rows, the deletion of a consumed one-time prekey and the pinned identity;
- encrypt stores the advanced state together with the exact envelope bytes
  in the outbox before anything is sent; asking again with the same
  ``message_ref`` returns those same bytes instead of encrypting anew.

Python cannot wipe ``bytes``; deleted rows are overwritten by SQLite's
``secure_delete``, and disk encryption covers the rest.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from nacl.pwhash import argon2id

from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto.keys import (
    MAX_PREKEY_ID,
    IdentityKeyPair,
    OneTimePrekey,
    PrekeyBundle,
    SignedPrekey,
    make_prekey_upload,
)
from agentvault_client.crypto.ratchet import MAX_SKIPPED_KEYS, SkippedKeys
from agentvault_client.crypto.session import LocalDevice, SessionRecord
from agentvault_client.errors import (
    BadStorageKeyError,
    DecryptFailedError,
    IdentityChangedError,
    InsecureKeyFileError,
    NoSessionError,
    ProtocolError,
    StateCorruptError,
    UnsupportedVersionError,
)

__all__ = [
    "ARGON2_MEMLIMIT",
    "ARGON2_OPSLIMIT",
    "OutboxEntry",
    "Store",
    "create_key_file",
    "read_key_file",
]

SCHEMA_VERSION = 1
#: Default Argon2id cost ("interactive": 2 passes over 64 MiB).
ARGON2_OPSLIMIT = argon2id.OPSLIMIT_INTERACTIVE
ARGON2_MEMLIMIT = argon2id.MEMLIMIT_INTERACTIVE
_SEAL_DOMAIN = b"AgentVault-state-v1\x00"
_KEY_CHECK = b"AgentVault storage key check"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    device_id TEXT,
    public_key BLOB NOT NULL,
    sealed_seed BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS signed_prekeys (
    prekey_id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    sealed_private BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    prekey_id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL,
    sealed_private BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    peer_device_id TEXT PRIMARY KEY,
    sealed_record BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped_keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_device_id TEXT NOT NULL,
    ratchet_key BLOB NOT NULL,
    n INTEGER NOT NULL,
    sealed_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (peer_device_id, ratchet_key, n)
);
CREATE TABLE IF NOT EXISTS identities (
    peer_device_id TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    pending_key BLOB,
    first_seen INTEGER NOT NULL,
    accepted_at INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_device_id TEXT NOT NULL,
    message_ref TEXT NOT NULL,
    envelope BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at INTEGER,
    UNIQUE (peer_device_id, message_ref)
);
"""


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read a 32-byte storage key (raw or base64) from a 0600 key file.

    Raise :class:`InsecureKeyFileError` when group or others have any access.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise InsecureKeyFileError()
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) == 32:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadStorageKeyError("The key file does not hold a key.") from None
    if len(key) != 32:
        raise BadStorageKeyError("The key file does not hold a 32-byte key.")
    return key


def create_key_file(path: str | os.PathLike[str]) -> bytes:
    """Create a new key file with mode 0600 holding a random key; return it."""
    key = prim.random_bytes(32)
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
    finally:
        os.close(fd)
    return key


@dataclass(frozen=True, slots=True, repr=False)
class OutboxEntry:
    """Hold one envelope waiting to be sent (or already sent)."""

    entry_id: int
    peer_device_id: str
    message_ref: str
    envelope: bytes
    sent: bool

    def __repr__(self) -> str:
        """Return ids only."""
        return (
            f"OutboxEntry(entry_id={self.entry_id}, "
            f"peer_device_id={self.peer_device_id!r}, "
            f"message_ref={self.message_ref!r}, sent={self.sent})"
        )


class Store:
    """Hold one device's sealed local state in a SQLite database."""

    def __init__(self, conn: sqlite3.Connection, storage_key: bytes) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = conn
        self._key = storage_key
        self._records: dict[str, SessionRecord] = {}
        self._identity: IdentityKeyPair | None = None
        self._device_id: str | None = None

    def __repr__(self) -> str:
        """Return a representation without key material."""
        return f"Store(device_id={self._device_id!r})"

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        storage_key: bytes | None = None,
        opslimit: int = ARGON2_OPSLIMIT,
        memlimit: int = ARGON2_MEMLIMIT,
        durable: bool = False,
    ) -> Store:
        """Open (or create) the store at ``path`` with exactly one key source.

        ``durable=True`` makes every commit wait for the disk (synchronous
        FULL); the default (NORMAL, with WAL) survives a crash of the
        process but may lose the last commits on power loss. Random nonces
        keep a rolled-back state from ever reusing a (key, nonce) pair.
        """
        sources = [x is not None for x in (passphrase, key_file, storage_key)]
        if sum(sources) != 1:
            raise ValueError("Give exactly one of passphrase, key_file, storage_key.")
        # Created 0600 first: SQLite gives its -wal and -shm files the
        # database file's mode.
        os.close(os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(os.fspath(path), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            if key_file is not None:
                storage_key = read_key_file(key_file)
            elif passphrase is not None:
                storage_key = cls._derive_key(conn, passphrase, opslimit, memlimit)
            assert storage_key is not None
            if len(storage_key) != 32:
                raise BadStorageKeyError("The storage key must be 32 bytes.")
            store = cls(conn, storage_key)
            store._check_key()
        except BaseException:
            conn.close()
            raise
        return store

    @staticmethod
    def _derive_key(
        conn: sqlite3.Connection,
        passphrase: str | bytes,
        opslimit: int,
        memlimit: int,
    ) -> bytes:
        secret = (
            passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        )
        row = conn.execute("SELECT value FROM meta WHERE name = 'kdf'").fetchone()
        if row is None:
            salt = prim.random_bytes(argon2id.SALTBYTES)
            params = struct.pack(">QQ", opslimit, memlimit) + salt
            conn.execute("INSERT INTO meta VALUES ('kdf', ?)", (params,))
        else:
            opslimit, memlimit = struct.unpack_from(">QQ", row[0])
            salt = bytes(row[0][16:])
        return argon2id.kdf(32, secret, salt, opslimit=opslimit, memlimit=memlimit)

    def _check_key(self) -> None:
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'key_check'"
        ).fetchone()
        if row is None:
            sealed = self._seal(b"meta", _KEY_CHECK)
            with self._transaction():
                self._conn.execute(
                    "INSERT INTO meta VALUES ('key_check', ?)", (sealed,)
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                    (SCHEMA_VERSION,),
                )
            return
        try:
            value = self._open(b"meta", row[0])
        except StateCorruptError:
            raise BadStorageKeyError() from None
        if value != _KEY_CHECK:
            raise BadStorageKeyError()
        schema = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'schema'"
        ).fetchone()
        if schema is None or schema[0] != SCHEMA_VERSION:
            raise UnsupportedVersionError("The store's schema version is unknown.")

    def close(self) -> None:
        """Close the database."""
        self._conn.close()
        self._records.clear()

    def __enter__(self) -> Self:
        """Return the store itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the database."""
        self.close()

    # -- sealing and transactions --------------------------------------------

    def _seal(self, label: bytes, plaintext: bytes) -> bytes:
        nonce = prim.random_bytes(24)
        return nonce + prim.aead_encrypt(
            self._key, nonce, plaintext, _SEAL_DOMAIN + label
        )

    def _open(self, label: bytes, sealed: bytes) -> bytes:
        if len(sealed) < 40:
            raise StateCorruptError()
        try:
            return prim.aead_decrypt(
                self._key, sealed[:24], sealed[24:], _SEAL_DOMAIN + label
            )
        except DecryptFailedError:
            raise StateCorruptError() from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- identity -----------------------------------------------------------

    def create_identity(self) -> IdentityKeyPair:
        """Generate and store this device's identity key (once)."""
        if self.get_identity() is not None:
            raise ProtocolError("This store already has an identity key.")
        identity = IdentityKeyPair.generate()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO identity (id, public_key, sealed_seed, created_at) "
                "VALUES (1, ?, ?, ?)",
                (
                    identity.public_key,
                    self._seal(b"identity", identity.seed),
                    int(time.time()),
                ),
            )
        self._identity = identity
        return identity

    def get_identity(self) -> IdentityKeyPair | None:
        """Return this device's identity key, or None before it is created."""
        if self._identity is None:
            row = self._conn.execute(
                "SELECT sealed_seed, device_id FROM identity WHERE id = 1"
            ).fetchone()
            if row is None:
                return None
            self._identity = IdentityKeyPair(self._open(b"identity", row[0]))
            self._device_id = row[1]
        return self._identity

    def set_device_id(self, device_id: str) -> None:
        """Record the device id the server assigned at enrollment."""
        if self.get_identity() is None:
            raise ProtocolError("Create the identity key first.")
        with self._transaction() as conn:
            conn.execute("UPDATE identity SET device_id = ? WHERE id = 1", (device_id,))
        self._device_id = device_id

    @property
    def device_id(self) -> str | None:
        """Return the device id, or None before enrollment."""
        self.get_identity()
        return self._device_id

    def local_device(self) -> LocalDevice:
        """Return the identity and device id as a :class:`LocalDevice`."""
        identity = self.get_identity()
        if identity is None or self._device_id is None:
            raise ProtocolError("The device has no identity key or device id yet.")
        return LocalDevice(identity, self._device_id)

    # -- prekeys ------------------------------------------------------------

    def _next_ids(self, conn: sqlite3.Connection, name: str, count: int) -> int:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        first = 1 if row is None else int(row[0])
        if first + count - 1 > MAX_PREKEY_ID:
            raise ProtocolError("Prekey ids are exhausted.")
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, first + count))
        return first

    def generate_signed_prekey(self) -> SignedPrekey:
        """Create, store and return a new signed prekey with a fresh id."""
        identity = self.get_identity()
        if identity is None:
            raise ProtocolError("Create the identity key first.")
        now = int(time.time())
        with self._transaction() as conn:
            prekey_id = self._next_ids(conn, "next_signed_prekey_id", 1)
            spk = SignedPrekey.generate(identity, prekey_id, created_at=now)
            conn.execute(
                "INSERT INTO signed_prekeys VALUES (?, ?, ?, ?, ?)",
                (
                    prekey_id,
                    spk.public_key,
                    spk.signature,
                    self._seal(b"spk\x00%d" % prekey_id, spk.private_key),
                    now,
                ),
            )
        return spk

    def generate_one_time_prekeys(self, count: int) -> list[OneTimePrekey]:
        """Create and store ``count`` one-time prekeys with ids never used before."""
        if not 0 < count <= 1000:
            raise ValueError("count must be between 1 and 1000")
        now = int(time.time())
        with self._transaction() as conn:
            first = self._next_ids(conn, "next_one_time_prekey_id", count)
            keys = [OneTimePrekey.generate(first + i) for i in range(count)]
            conn.executemany(
                "INSERT INTO one_time_prekeys VALUES (?, ?, ?, ?)",
                [
                    (
                        k.prekey_id,
                        k.public_key,
                        self._seal(b"opk\x00%d" % k.prekey_id, k.private_key),
                        now,
                    )
                    for k in keys
                ],
            )
        return keys

    def signed_prekey(self, prekey_id: int) -> SignedPrekey | None:
        """Return a stored signed prekey by id."""
        row = self._conn.execute(
            "SELECT public_key, signature, sealed_private, created_at "
            "FROM signed_prekeys WHERE prekey_id = ?",
            (prekey_id,),
        ).fetchone()
        if row is None:
            return None
        private = self._open(b"spk\x00%d" % prekey_id, row[2])
        return SignedPrekey(prekey_id, private, row[0], row[1], row[3])

    def latest_signed_prekey(self) -> SignedPrekey | None:
        """Return the newest signed prekey, if any."""
        row = self._conn.execute("SELECT MAX(prekey_id) FROM signed_prekeys").fetchone()
        return None if row[0] is None else self.signed_prekey(row[0])

    def delete_signed_prekey(self, prekey_id: int) -> None:
        """Delete an old signed prekey (after its grace period)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM signed_prekeys WHERE prekey_id = ?", (prekey_id,))

    def one_time_prekey(self, prekey_id: int) -> OneTimePrekey | None:
        """Return a stored one-time prekey by id, if not yet consumed."""
        row = self._conn.execute(
            "SELECT public_key, sealed_private FROM one_time_prekeys "
            "WHERE prekey_id = ?",
            (prekey_id,),
        ).fetchone()
        if row is None:
            return None
        private = self._open(b"opk\x00%d" % prekey_id, row[1])
        return OneTimePrekey(prekey_id, private, row[0])

    def count_one_time_prekeys(self) -> int:
        """Return how many one-time prekey private keys are held."""
        return int(
            self._conn.execute("SELECT COUNT(*) FROM one_time_prekeys").fetchone()[0]
        )

    def prekey_upload(self, new_one_time_prekeys: int = 100) -> dict[str, Any]:
        """Generate prekeys and return the body of the prekey upload call.

        A signed prekey is created when none exists yet.
        """
        spk = self.latest_signed_prekey() or self.generate_signed_prekey()
        opks = (
            self.generate_one_time_prekeys(new_one_time_prekeys)
            if new_one_time_prekeys
            else []
        )
        return make_prekey_upload(spk, opks)

    # -- trust (TOFU) -------------------------------------------------------

    def pinned_identity(self, peer_device_id: str) -> bytes | None:
        """Return the pinned identity key of a peer device, if any."""
        row = self._conn.execute(
            "SELECT identity_key FROM identities WHERE peer_device_id = ?",
            (peer_device_id,),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def pending_identity(self, peer_device_id: str) -> bytes | None:
        """Return a changed identity key awaiting the user's acceptance."""
        row = self._conn.execute(
            "SELECT pending_key FROM identities WHERE peer_device_id = ?",
            (peer_device_id,),
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def _record_changed_identity(self, peer_device_id: str, key: bytes) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE identities SET pending_key = ? WHERE peer_device_id = ?",
                (key, peer_device_id),
            )

    def _check_identity(self, peer_device_id: str, key: bytes) -> bool:
        """Return True when ``key`` is new (to pin); raise when it changed."""
        pinned = self.pinned_identity(peer_device_id)
        if pinned is None:
            return True
        if pinned != key:
            self._record_changed_identity(peer_device_id, key)
            raise IdentityChangedError()
        return False

    def accept_identity(self, peer_device_id: str) -> None:
        """Trust the changed key of a peer device and drop its old sessions.

        A new session must then be started from a fresh bundle.
        """
        pending = self.pending_identity(peer_device_id)
        if pending is None:
            return
        with self._transaction() as conn:
            conn.execute(
                "UPDATE identities SET identity_key = pending_key, pending_key = NULL,"
                " accepted_at = ? WHERE peer_device_id = ?",
                (int(time.time()), peer_device_id),
            )
            conn.execute(
                "DELETE FROM sessions WHERE peer_device_id = ?", (peer_device_id,)
            )
            conn.execute(
                "DELETE FROM skipped_keys WHERE peer_device_id = ?", (peer_device_id,)
            )
        self._records.pop(peer_device_id, None)

    # -- sessions -----------------------------------------------------------

    def _record_label(self, peer_device_id: str) -> bytes:
        return b"session\x00" + peer_device_id.encode("utf-8")

    def _skipped_label(self, peer_device_id: str, dh: bytes, n: int) -> bytes:
        return (
            b"skipped\x00" + peer_device_id.encode("utf-8") + b"\x00" + dh + b"%d" % n
        )

    def load_session(self, peer_device_id: str) -> SessionRecord | None:
        """Return the session record of a peer device (cached after first load)."""
        record = self._records.get(peer_device_id)
        if record is not None:
            return record
        row = self._conn.execute(
            "SELECT sealed_record FROM sessions WHERE peer_device_id = ?",
            (peer_device_id,),
        ).fetchone()
        if row is None:
            return None
        skipped = SkippedKeys()
        for dh, n, sealed, created in self._conn.execute(
            "SELECT ratchet_key, n, sealed_key, created_at FROM skipped_keys "
            "WHERE peer_device_id = ? ORDER BY seq",
            (peer_device_id,),
        ):
            mk = self._open(self._skipped_label(peer_device_id, dh, n), sealed)
            skipped.add(bytes(dh), n, mk, created)
        blob = self._open(self._record_label(peer_device_id), row[0])
        record = SessionRecord.deserialize(blob, skipped)
        if record.peer_device_id != peer_device_id:
            raise StateCorruptError()
        self._records[peer_device_id] = record
        return record

    def has_session(self, peer_device_id: str) -> bool:
        """Tell whether a session with the peer device exists."""
        record = self.load_session(peer_device_id)
        return record is not None and record.has_session

    def _write_record(self, conn: sqlite3.Connection, record: SessionRecord) -> None:
        peer = record.peer_device_id
        sealed = self._seal(
            self._record_label(peer), record.serialize(include_skipped=False)
        )
        conn.execute(
            "INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT (peer_device_id) "
            "DO UPDATE SET sealed_record = excluded.sealed_record, "
            "updated_at = excluded.updated_at",
            (peer, sealed, int(time.time())),
        )

    def start_session(self, bundle: PrekeyBundle | dict[str, Any]) -> None:
        """Start a session from a peer's prekey bundle (verifying its signature).

        The identity key is pinned on first use; a different key than the
        pinned one raises :class:`IdentityChangedError`.
        """
        if isinstance(bundle, dict):
            bundle = PrekeyBundle.from_dict(bundle)
        local = self.local_device()
        peer = bundle.device_id
        new_identity = self._check_identity(peer, bundle.identity_key)
        if self.pending_identity(peer) is not None:
            raise IdentityChangedError()

        record = self.load_session(peer)
        if record is None or record.peer_identity != bundle.identity_key:
            record = SessionRecord(peer, bundle.identity_key)
        try:
            with self._transaction() as conn:
                record.initiate(local, bundle)
                self._write_record(conn, record)
                if new_identity:
                    self._pin(conn, peer, bundle.identity_key)
        except BaseException:
            self._records.pop(peer, None)
            raise
        self._records[peer] = record

    def _pin(self, conn: sqlite3.Connection, peer: str, key: bytes) -> None:
        conn.execute(
            "INSERT INTO identities (peer_device_id, identity_key, first_seen) "
            "VALUES (?, ?, ?)",
            (peer, key, int(time.time())),
        )

    def encrypt(
        self, peer_device_id: str, plaintext: bytes, *, message_ref: str
    ) -> bytes:
        """Encrypt for a peer device and store the envelope in the outbox.

        The advanced state and the exact envelope bytes commit together
        before this returns; calling again with the same ``message_ref``
        returns the stored bytes and encrypts nothing.
        """
        row = self._conn.execute(
            "SELECT envelope FROM outbox WHERE peer_device_id = ? AND message_ref = ?",
            (peer_device_id, message_ref),
        ).fetchone()
        if row is not None:
            return bytes(row[0])
        if self.pending_identity(peer_device_id) is not None:
            raise IdentityChangedError()
        local = self.local_device()
        record = self.load_session(peer_device_id)
        if record is None or not record.has_session:
            raise NoSessionError()
        pinned = self.pinned_identity(peer_device_id)
        if pinned is not None and pinned != record.peer_identity:
            raise IdentityChangedError()

        data, plan = record.prepare_encrypt(local, plaintext)
        try:
            with self._transaction() as conn:
                plan.apply()
                self._write_record(conn, record)
                conn.execute(
                    "INSERT INTO outbox (peer_device_id, message_ref, envelope, "
                    "created_at) VALUES (?, ?, ?, ?)",
                    (peer_device_id, message_ref, data, int(time.time())),
                )
        except BaseException:
            self._records.pop(peer_device_id, None)
            raise
        return data

    def outbox(self, *, include_sent: bool = False) -> list[OutboxEntry]:
        """Return stored envelopes, oldest first (unsent ones by default)."""
        query = (
            "SELECT id, peer_device_id, message_ref, envelope, sent_at FROM outbox"
            + ("" if include_sent else " WHERE sent_at IS NULL")
            + " ORDER BY id"
        )
        return [
            OutboxEntry(r[0], r[1], r[2], bytes(r[3]), r[4] is not None)
            for r in self._conn.execute(query)
        ]

    def mark_sent(self, peer_device_id: str, message_ref: str) -> None:
        """Mark an outbox envelope as accepted by the server."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE outbox SET sent_at = ? WHERE peer_device_id = ? "
                "AND message_ref = ?",
                (int(time.time()), peer_device_id, message_ref),
            )

    def prune_outbox(self, *, sent_before: int) -> int:
        """Delete sent envelopes older than ``sent_before`` (Unix seconds)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
                (sent_before,),
            )
        return cursor.rowcount

    def decrypt(self, peer_device_id: str, data: bytes) -> bytes:
        """Decrypt an envelope from a peer device and commit the new state.

        Nothing is stored unless the message authenticates; a consumed
        one-time prekey is deleted in the same transaction.
        """
        message = env.parse(data)
        local = self.local_device()
        new_identity = False
        if message.prekey is not None:
            new_identity = self._check_identity(
                peer_device_id, message.prekey.identity_key
            )
        record = self.load_session(peer_device_id)
        if record is None:
            if message.prekey is None:
                raise NoSessionError()
            record = SessionRecord(peer_device_id, message.prekey.identity_key)
        elif message.prekey is not None and (
            record.peer_identity != message.prekey.identity_key
        ):
            raise IdentityChangedError()

        plaintext, plan = record.prepare_decrypt(local, data, self)
        inner = plan.plan
        now = int(time.time())
        try:
            with self._transaction() as conn:
                plan.apply(now)
                self._write_record(conn, record)
                if inner.used_skipped is not None:
                    dh, n = inner.used_skipped
                    conn.execute(
                        "DELETE FROM skipped_keys WHERE peer_device_id = ? "
                        "AND ratchet_key = ? AND n = ?",
                        (peer_device_id, dh, n),
                    )
                if inner.new_skipped:
                    conn.executemany(
                        "INSERT OR REPLACE INTO skipped_keys (peer_device_id, "
                        "ratchet_key, n, sealed_key, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [
                            (
                                peer_device_id,
                                dh,
                                n,
                                self._seal(
                                    self._skipped_label(peer_device_id, dh, n), mk
                                ),
                                now,
                            )
                            for dh, n, mk in inner.new_skipped
                        ],
                    )
                    conn.execute(
                        "DELETE FROM skipped_keys WHERE peer_device_id = ? AND seq "
                        "NOT IN (SELECT seq FROM skipped_keys WHERE "
                        "peer_device_id = ? ORDER BY seq DESC LIMIT ?)",
                        (peer_device_id, peer_device_id, MAX_SKIPPED_KEYS),
                    )
                if plan.consumed_one_time_prekey is not None:
                    conn.execute(
                        "DELETE FROM one_time_prekeys WHERE prekey_id = ?",
                        (plan.consumed_one_time_prekey,),
                    )
                if new_identity:
                    self._pin(conn, peer_device_id, record.peer_identity)
        except BaseException:
            self._records.pop(peer_device_id, None)
            raise
        self._records[peer_device_id] = record
        return plaintext

    def purge_skipped_keys(self, *, older_than: int) -> int:
        """Delete skipped message keys created before ``older_than`` (Unix s)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM skipped_keys WHERE created_at < ?", (older_than,)
            )
        for record in self._records.values():
            record.skipped.purge_older_than(older_than)
        return cursor.rowcount

    def count_skipped_keys(self, peer_device_id: str) -> int:
        """Return how many skipped keys are stored for a peer device."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM skipped_keys WHERE peer_device_id = ?",
            (peer_device_id,),
        ).fetchone()
        return int(row[0])
