"""Compute safety numbers (libsignal's scheme) and short key fingerprints.

Safety number: for each side, ``d = SHA-512(version(2) || key || id || key)``
then ``d = SHA-512(d || key)`` for 5199 more rounds; the first 30 bytes form
six 5-byte big-endian integers, each printed mod 100000 as 5 digits. The two
30-digit halves are sorted and joined into 60 digits. Our ``key`` is
``0xED || Ed25519 public key`` and ``id`` the device id in UTF-8.

Fingerprint: ``SHA-256(b"AgentVault-fingerprint-v1" || Ed25519 public key)``
split into eight 4-byte big-endian integers, each printed mod 100000 as 5
digits, joined by single spaces (47 characters).
"""

from __future__ import annotations

import hashlib
import hmac

from agentvault_client.errors import InvalidKeyError

__all__ = [
    "FINGERPRINT_DOMAIN",
    "SAFETY_NUMBER_ITERATIONS",
    "fingerprint",
    "format_safety_number",
    "safety_number",
    "safety_number_half",
    "safety_numbers_match",
]

SAFETY_NUMBER_ITERATIONS = 5200
SAFETY_NUMBER_VERSION = 0
FINGERPRINT_DOMAIN = b"AgentVault-fingerprint-v1"
ED25519_TYPE = b"\xed"


def _five_digit_groups(data: bytes, width: int) -> list[str]:
    groups = []
    for start in range(0, len(data), width):
        value = int.from_bytes(data[start : start + width], "big") % 100000
        groups.append(f"{value:05d}")
    return groups


def safety_number_half(
    key: bytes,
    stable_id: bytes,
    *,
    iterations: int = SAFETY_NUMBER_ITERATIONS,
    version: int = SAFETY_NUMBER_VERSION,
) -> str:
    """Return one side's 30 digits for an encoded ``key`` and ``stable_id``."""
    digest = hashlib.sha512(version.to_bytes(2, "big") + key + stable_id + key).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest + key).digest()
    return "".join(_five_digit_groups(digest[:30], 5))


def _encode_identity(identity_key: bytes) -> bytes:
    if len(identity_key) != 32:
        raise InvalidKeyError()
    return ED25519_TYPE + identity_key


def safety_number(
    local_identity_key: bytes,
    local_id: str,
    remote_identity_key: bytes,
    remote_id: str,
) -> str:
    """Return the 60-digit safety number of two Ed25519 identity keys.

    Both devices compute the same number because the halves are sorted.
    """
    local = safety_number_half(
        _encode_identity(local_identity_key), local_id.encode("utf-8")
    )
    remote = safety_number_half(
        _encode_identity(remote_identity_key), remote_id.encode("utf-8")
    )
    return "".join(sorted((local, remote)))


def format_safety_number(number: str) -> str:
    """Return the 60 digits in twelve space-separated groups of five."""
    return " ".join(number[i : i + 5] for i in range(0, len(number), 5))


def safety_numbers_match(expected: str, shown: str) -> bool:
    """Compare two safety numbers in constant time, ignoring spaces."""
    left = expected.replace(" ", "").encode("ascii", "replace")
    right = shown.replace(" ", "").encode("ascii", "replace")
    return hmac.compare_digest(left, right)


def fingerprint(identity_key: bytes) -> str:
    """Return the short fingerprint of a 32-byte Ed25519 public key.

    A pure function of the key, so the server computes the same value.
    """
    if len(identity_key) != 32:
        raise InvalidKeyError()
    digest = hashlib.sha256(FINGERPRINT_DOMAIN + identity_key).digest()
    return " ".join(_five_digit_groups(digest, 4))
