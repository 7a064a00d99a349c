"""Encode application messages and keep the received ones in a sealed log.

Inside each envelope the plaintext is one compact JSON header line, a
newline, then the UTF-8 body::

    {"v":1,"kind":"text","room":"<room id>","id":"<client id>",...}\\n<body>

The header binds the room (a relay that moves an envelope to another room
is caught) and carries the sender's client message id and ``reply_to``.

Received messages are written to ``messages.db`` before the server is told
to drop them, and handed to the application in the order the relay
delivered them; each is marked handled once the application is done. The
message content is sealed with XChaCha20-Poly1305 under a key derived from
the profile's storage key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from typing import Any

from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto.envelope import MAX_PLAINTEXT_BYTES
from agentvault_client.errors import BadEnvelopeError, PayloadTooLargeError

__all__ = [
    "KIND_AGENT_ERROR",
    "KIND_AGENT_STATUS",
    "KIND_TEXT",
    "KIND_UNDECRYPTABLE",
    "MAX_BODY_BYTES",
    "Message",
    "MessageLog",
    "decode_payload",
    "encode_payload",
]

PAYLOAD_VERSION = 1
KIND_TEXT = "text"
KIND_AGENT_ERROR = "agent_error"
KIND_AGENT_STATUS = "agent_status"
#: Recorded locally for an envelope that failed to decrypt (never sent).
KIND_UNDECRYPTABLE = "undecryptable"
#: Room for the header inside the envelope's plaintext limit.
MAX_HEADER_BYTES = 1024
MAX_BODY_BYTES = MAX_PLAINTEXT_BYTES - MAX_HEADER_BYTES

_SEAL_INFO = b"AgentVault-message-log-v1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sealed BLOB NOT NULL,
    received_at REAL NOT NULL,
    handled_at REAL
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (handled_at, local_id);
"""


def encode_payload(
    text: str,
    *,
    room_id: str,
    client_message_id: str,
    kind: str = KIND_TEXT,
    reply_to: str | None = None,
) -> bytes:
    """Return the plaintext bytes of one message, header line first."""
    header: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "kind": kind,
        "room": room_id,
        "id": client_message_id,
        "ts": round(time.time(), 3),
    }
    if reply_to is not None:
        header["reply_to"] = reply_to
    line = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    body = text.encode("utf-8")
    if len(body) > MAX_BODY_BYTES or len(line) > MAX_HEADER_BYTES:
        raise PayloadTooLargeError(
            f"A message body is at most {MAX_BODY_BYTES} bytes of UTF-8."
        )
    return line + b"\n" + body


def decode_payload(data: bytes) -> tuple[dict[str, Any], str]:
    """Return the header and body of a decrypted message, or raise."""
    line, sep, body = data.partition(b"\n")
    if not sep:
        raise BadEnvelopeError("The message has no header line.")
    try:
        header = json.loads(line)
        text = body.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise BadEnvelopeError("The message header or body is malformed.") from None
    if not isinstance(header, dict) or header.get("v") != PAYLOAD_VERSION:
        raise BadEnvelopeError("The message header version is unknown.")
    if not isinstance(header.get("kind"), str) or not isinstance(
        header.get("room"), str
    ):
        raise BadEnvelopeError("The message header lacks its kind or room.")
    return header, text


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One received message, as the application sees it.

    ``kind`` is ``text``, ``agent_error`` or ``agent_status`` as the sender
    chose, or ``undecryptable`` (then ``error`` holds the SDK error code and
    ``text`` is empty). ``outgoing`` is true for messages this member sent
    from another of its devices.
    """

    local_id: int
    seq: int
    message_id: str
    room_id: str
    sender_device_id: str
    sender_member_id: str
    server_ts: str
    kind: str
    text: str
    client_message_id: str | None = None
    reply_to: str | None = None
    sent_at: float | None = None
    error: str | None = None
    outgoing: bool = False

    def __repr__(self) -> str:
        """Return ids and sizes, never the text."""
        return (
            f"Message(seq={self.seq}, message_id={self.message_id!r}, "
            f"kind={self.kind!r}, chars={len(self.text)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the message as a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data.pop("local_id")
        return data


class MessageLog:
    """Hold received messages in ``messages.db``, content sealed."""

    def __init__(self, conn: sqlite3.Connection, key: bytes) -> None:
        """Wrap an open connection; use :meth:`open`."""
        self._conn = conn
        self._key = key

    def __repr__(self) -> str:
        """Return a representation without key material."""
        return "MessageLog()"

    @classmethod
    def open(cls, path: str | os.PathLike[str], storage_key: bytes) -> MessageLog:
        """Open (or create, 0600) the log at ``path``."""
        fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        key = prim.hkdf_sha256(storage_key, salt=None, info=_SEAL_INFO, length=32)
        return cls(conn, key)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    # -- sealing ------------------------------------------------------------

    def _seal(self, message_id: str, data: dict[str, Any]) -> bytes:
        nonce = prim.random_bytes(prim.AEAD_NONCE_BYTES)
        raw = json.dumps(data, ensure_ascii=False).encode("utf-8")
        return nonce + prim.aead_encrypt(self._key, nonce, raw, message_id.encode())

    def _open(self, message_id: str, sealed: bytes) -> dict[str, Any]:
        nonce, box = sealed[: prim.AEAD_NONCE_BYTES], sealed[prim.AEAD_NONCE_BYTES :]
        raw = prim.aead_decrypt(self._key, nonce, box, message_id.encode())
        data: dict[str, Any] = json.loads(raw)
        return data

    # -- writing ------------------------------------------------------------

    def has(self, message_id: str) -> bool:
        """Tell whether the message was already stored."""
        row = self._conn.execute(
            "SELECT 1 FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
        return row is not None

    def add(self, fields: dict[str, Any]) -> bool:
        """Store one received message; return False if it was there already.

        ``fields`` holds every :class:`Message` field but ``local_id``.
        """
        sealed = self._seal(fields["message_id"], fields)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO messages (seq, message_id, room_id, sealed, "
                "received_at) VALUES (?, ?, ?, ?, ?)",
                (
                    fields["seq"],
                    fields["message_id"],
                    fields["room_id"],
                    sealed,
                    time.time(),
                ),
            )
            self._raise_last_seq(int(fields["seq"]))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return cursor.rowcount == 1

    def mark_handled(self, local_id: int) -> None:
        """Record that the application is done with a message."""
        self._conn.execute(
            "UPDATE messages SET handled_at = ? WHERE local_id = ?",
            (time.time(), local_id),
        )

    # -- reading ------------------------------------------------------------

    def pending(self, *, after: int = 0, limit: int = 100) -> list[Message]:
        """Return unhandled messages with ``local_id > after``, in order."""
        rows = self._conn.execute(
            "SELECT local_id, message_id, sealed FROM messages "
            "WHERE handled_at IS NULL AND local_id > ? ORDER BY local_id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Message(local_id=r[0], **self._open(r[1], bytes(r[2]))) for r in rows]

    def recent(self, *, limit: int = 20) -> list[Message]:
        """Return the newest messages, oldest first."""
        rows = self._conn.execute(
            "SELECT local_id, message_id, sealed FROM messages "
            "ORDER BY local_id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            Message(local_id=r[0], **self._open(r[1], bytes(r[2])))
            for r in reversed(rows)
        ]

    def counts(self) -> tuple[int, int]:
        """Return (stored, still pending) message counts."""
        row = self._conn.execute(
            "SELECT COUNT(*), COUNT(*) - COUNT(handled_at) FROM messages"
        ).fetchone()
        return int(row[0]), int(row[1])

    # -- cursor -------------------------------------------------------------

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        """Return a stored setting."""
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = ?", (name,)
        ).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        """Store a setting."""
        self._conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @property
    def last_seq(self) -> int:
        """Return the highest relay sequence number stored."""
        return int(self.get_meta("last_seq", "0") or 0)

    def set_last_seq(self, seq: int) -> None:
        """Raise the stored relay sequence number to ``seq``."""
        self._raise_last_seq(seq)

    def _raise_last_seq(self, seq: int) -> None:
        self._conn.execute(
            "INSERT INTO meta VALUES ('last_seq', ?) ON CONFLICT (name) DO UPDATE "
            "SET value = excluded.value "
            "WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
            (str(seq),),
        )
