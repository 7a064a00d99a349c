"""Encode and parse the v1 envelope, and pad plaintexts to 160-byte buckets.

The byte layout is documented in ``docs/envelope.md``. Every field has a fixed
length per (version, type), so the associated data is unambiguous. Parsing
rejects unknown versions, types and flags and every wrong length before any
cryptography runs.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from agentvault_client.errors import BadEnvelopeError, UnsupportedVersionError

__all__ = [
    "HEADER_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "PAD_BLOCK",
    "TYPE_PREKEY",
    "TYPE_RATCHET",
    "VERSION",
    "Envelope",
    "PrekeyFields",
    "decode_b64",
    "encode_b64",
    "encode_header",
    "pad",
    "parse",
    "prekey_prefix",
    "ratchet_prefix",
    "unpad",
]

VERSION = 0x01
TYPE_PREKEY = 0x01
TYPE_RATCHET = 0x02
#: Flag bit 0 is reserved for header encryption; v1 accepts no flag at all.
FLAG_HEADER_ENCRYPTED = 0x01
KNOWN_FLAGS = 0x00

HEADER_BYTES = 40  # ratchet public key (32) || PN (u32) || N (u32)
NONCE_BYTES = 24
TAG_BYTES = 16
PAD_BLOCK = 160
MAX_PLAINTEXT_BYTES = 65536
MAX_PADDED_BYTES = ((MAX_PLAINTEXT_BYTES + PAD_BLOCK) // PAD_BLOCK) * PAD_BLOCK

RATCHET_PREFIX_BYTES = 3 + HEADER_BYTES  # 43
PREKEY_FIELDS_BYTES = 32 + 32 + 4 + 4  # IK_A, EK_A, spk_id, opk_id
PREKEY_PREFIX_BYTES = 3 + PREKEY_FIELDS_BYTES + HEADER_BYTES  # 115
MIN_BODY_BYTES = PAD_BLOCK + TAG_BYTES
MAX_ENVELOPE_BYTES = PREKEY_PREFIX_BYTES + NONCE_BYTES + MAX_PADDED_BYTES + TAG_BYTES

_header = struct.Struct(">32sII")
_ratchet_prefix = struct.Struct(">BBB32sII")
_prekey_fields = struct.Struct(">32s32sII")


@dataclass(frozen=True, slots=True)
class PrekeyFields:
    """Hold the X3DH fields of a prekey envelope (public values only)."""

    identity_key: bytes
    base_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None


@dataclass(slots=True, repr=False)
class Envelope:
    """Hold a parsed envelope; ``prefix`` is every byte before the nonce."""

    type: int
    prefix: bytes
    ratchet_key: bytes
    pn: int
    n: int
    nonce: bytes
    ciphertext: bytes
    prekey: PrekeyFields | None

    def __repr__(self) -> str:
        """Return a representation with the type and counters only."""
        return f"Envelope(type={self.type}, pn={self.pn}, n={self.n})"


def encode_header(ratchet_key: bytes, pn: int, n: int) -> bytes:
    """Return the 40-byte ratchet header."""
    return _header.pack(ratchet_key, pn, n)


def ratchet_prefix(ratchet_key: bytes, pn: int, n: int) -> bytes:
    """Return the bytes before the nonce of a ratchet envelope."""
    return _ratchet_prefix.pack(VERSION, TYPE_RATCHET, 0, ratchet_key, pn, n)


def prekey_prefix(fields: PrekeyFields, ratchet_key: bytes, pn: int, n: int) -> bytes:
    """Return the bytes before the nonce of a prekey envelope."""
    opk_id = fields.one_time_prekey_id or 0
    return (
        b"\x01\x01\x00"
        + _prekey_fields.pack(
            fields.identity_key, fields.base_key, fields.signed_prekey_id, opk_id
        )
        + _header.pack(ratchet_key, pn, n)
    )


def parse(data: bytes) -> Envelope:
    """Parse envelope bytes, checking every length, version, type and flag."""
    size = len(data)
    if size < 3:
        raise BadEnvelopeError()
    if size > MAX_ENVELOPE_BYTES:
        raise BadEnvelopeError("The envelope is too large.")
    version, kind, flags = data[0], data[1], data[2]
    if version != VERSION:
        raise UnsupportedVersionError()
    if flags & ~KNOWN_FLAGS:
        raise BadEnvelopeError("The envelope sets an unknown flag.")

    if kind == TYPE_RATCHET:
        prefix_len = RATCHET_PREFIX_BYTES
    elif kind == TYPE_PREKEY:
        prefix_len = PREKEY_PREFIX_BYTES
    else:
        raise BadEnvelopeError("The envelope type is unknown.")

    body = size - prefix_len - NONCE_BYTES
    if body < MIN_BODY_BYTES or (body - TAG_BYTES) % PAD_BLOCK:
        raise BadEnvelopeError("The envelope has a wrong length.")

    prekey = None
    if kind == TYPE_PREKEY:
        ik, ek, spk_id, opk_id = _prekey_fields.unpack_from(data, 3)
        if spk_id == 0:
            raise BadEnvelopeError("The prekey envelope has no signed prekey id.")
        prekey = PrekeyFields(ik, ek, spk_id, opk_id or None)
    ratchet_key, pn, n = _header.unpack_from(data, prefix_len - HEADER_BYTES)
    nonce_end = prefix_len + NONCE_BYTES
    return Envelope(
        kind,
        data[:prefix_len],
        ratchet_key,
        pn,
        n,
        data[prefix_len:nonce_end],
        data[nonce_end:],
        prekey,
    )


def pad(plaintext: bytes) -> bytes:
    """Pad to a multiple of 160 bytes: 0x80, then zeros (at least one byte)."""
    size = len(plaintext)
    if size > MAX_PLAINTEXT_BYTES:
        raise BadEnvelopeError("The plaintext is too large.")
    target = (size // PAD_BLOCK + 1) * PAD_BLOCK
    return plaintext + b"\x80" + bytes(target - size - 1)


def unpad(padded: bytes) -> bytes:
    """Remove the padding added by :func:`pad` or raise :class:`BadEnvelopeError`."""
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(padded) - len(stripped) >= PAD_BLOCK:
        raise BadEnvelopeError("The plaintext padding is not valid.")
    return stripped[:-1]


def encode_b64(envelope: bytes) -> str:
    """Return envelope bytes as standard, padded base64 for JSON."""
    return base64.b64encode(envelope).decode("ascii")


def decode_b64(text: str) -> bytes:
    """Decode a base64 envelope strictly or raise :class:`BadEnvelopeError`."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError, AttributeError):
        raise BadEnvelopeError("The envelope is not valid base64.") from None
