"""The byte strings devices sign, and the fingerprint of an identity key.

Every domain-separated message the server verifies is defined here, in one
place, so the client SDK can match it byte for byte:

- Enrollment proof: ``b"AgentVault-enroll-v1" || SHA-256(invite token)``,
  where the token is its UTF-8 text ``av1.<tenant id>.<secret>``.
- Device-token challenge: ``b"AgentVault-auth-v1" || challenge (32 bytes)
  || device id (16 bytes, UUID big-endian) || audience (UTF-8)``.
- Signed prekey (as ``agentvault_client.crypto.keys``):
  ``b"AgentVault-spk-v1" || u32be(prekey id) || 0x05 || X25519 public key``.
- Fingerprint (as ``agentvault_client.crypto.safety``): SHA-256 of
  ``b"AgentVault-fingerprint-v1" || Ed25519 key``, cut into eight 4-byte
  big-endian integers, each printed mod 100000 as five digits, joined by
  spaces.
"""

from __future__ import annotations

import hashlib
import struct
import uuid

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

ENROLL_PROOF_DOMAIN = b"AgentVault-enroll-v1"
AUTH_CHALLENGE_DOMAIN = b"AgentVault-auth-v1"
SIGNED_PREKEY_DOMAIN = b"AgentVault-spk-v1"
FINGERPRINT_DOMAIN = b"AgentVault-fingerprint-v1"
X25519_TYPE = b"\x05"

KEY_BYTES = 32
SIGNATURE_BYTES = 64
CHALLENGE_BYTES = 32
MAX_PREKEY_ID = 0xFFFFFFFF

_u32 = struct.Struct(">I")


def is_valid_identity_key(identity_key: bytes) -> bool:
    """Return whether ``identity_key`` is a usable Ed25519 public key.

    The key must be 32 bytes and a point that converts to X25519, which
    libsodium refuses for small-order and non-canonical encodings.
    """
    if len(identity_key) != KEY_BYTES:
        return False
    try:
        crypto_sign_ed25519_pk_to_curve25519(identity_key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def verify_signature(identity_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is the identity key's over ``message``."""
    if len(signature) != SIGNATURE_BYTES or not is_valid_identity_key(identity_key):
        return False
    try:
        VerifyKey(identity_key).verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True


def enrollment_proof_message(invite_token: str) -> bytes:
    """Return the bytes a new device signs to prove it holds its key."""
    digest = hashlib.sha256(invite_token.encode("utf-8")).digest()
    return ENROLL_PROOF_DOMAIN + digest


def auth_challenge_message(
    challenge: bytes, device_id: uuid.UUID, audience: str
) -> bytes:
    """Return the bytes a device signs to exchange a challenge for a token."""
    return AUTH_CHALLENGE_DOMAIN + challenge + device_id.bytes + audience.encode()


def signed_prekey_message(prekey_id: int, public_key: bytes) -> bytes:
    """Return the bytes an identity key signs for a signed prekey."""
    if not 0 < prekey_id <= MAX_PREKEY_ID:
        raise ValueError("prekey id out of range")
    return SIGNED_PREKEY_DOMAIN + _u32.pack(prekey_id) + X25519_TYPE + public_key


def fingerprint(identity_key: bytes) -> str:
    """Return the fingerprint an admin compares with the device's screen."""
    if len(identity_key) != KEY_BYTES:
        raise ValueError("an identity key is 32 bytes")
    digest = hashlib.sha256(FINGERPRINT_DOMAIN + identity_key).digest()
    groups = (
        int.from_bytes(digest[start : start + 4], "big") % 100000
        for start in range(0, len(digest), 4)
    )
    return " ".join(f"{value:05d}" for value in groups)
