"""Wrap the primitives the protocol uses, mapping library errors to ours.

Every primitive comes from PyNaCl (libsodium), except HKDF and HMAC, which
PyNaCl lacks: HKDF comes from ``cryptography`` and HMAC from the standard
library. Nothing here is home-made cryptography.
"""

from __future__ import annotations

import functools
import hmac
import os

import nacl.bindings as _sodium
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agentvault_client.errors import (
    BadSignatureError,
    DecryptFailedError,
    InvalidKeyError,
    LowOrderKeyError,
)

__all__ = [
    "AEAD_KEY_BYTES",
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "KEY_BYTES",
    "aead_decrypt",
    "aead_encrypt",
    "ed25519_pk_to_x25519",
    "ed25519_public_from_seed",
    "ed25519_seed_to_x25519",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "hmac_sha256_pair",
    "random_bytes",
    "x25519",
    "x25519_generate",
    "x25519_public",
]

KEY_BYTES = 32
AEAD_KEY_BYTES = 32
AEAD_NONCE_BYTES = 24
AEAD_TAG_BYTES = 16

_scalarmult = _sodium.crypto_scalarmult
_scalarmult_base = _sodium.crypto_scalarmult_base
_box_keypair = _sodium.crypto_box_keypair
_aead_encrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_aead_decrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
try:
    # CPython's OpenSSL HMAC, which the stdlib hmac module wraps. Calling it
    # directly skips Python frames on the hottest path of the ratchet.
    from _hashlib import hmac_digest as _hmac_digest
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # pragma: no cover - only non-OpenSSL builds of CPython
    _hmac_digest = hmac.digest
    _hmac_new = hmac.new
_urandom = os.urandom


def random_bytes(length: int) -> bytes:
    """Return ``length`` bytes from the operating system's CSPRNG."""
    return _urandom(length)


def x25519_generate() -> tuple[bytes, bytes]:
    """Generate an X25519 key pair and return ``(private, public)``."""
    public, private = _box_keypair()
    return private, public


def x25519_public(private: bytes) -> bytes:
    """Return the X25519 public key of a 32-byte private key."""
    if len(private) != KEY_BYTES:
        raise InvalidKeyError()
    return _scalarmult_base(private)  # type: ignore[no-any-return]


def x25519(private: bytes, public: bytes) -> bytes:
    """Return the X25519 shared secret; refuse the all-zero (low-order) result.

    libsodium rejects an all-zero output, which PyNaCl reports as a bare
    ``RuntimeError``; it becomes :class:`LowOrderKeyError` here.
    """
    if len(public) != KEY_BYTES or len(private) != KEY_BYTES:
        raise InvalidKeyError()
    try:
        return _scalarmult(private, public)  # type: ignore[no-any-return]
    except (RuntimeError, nacl.exceptions.CryptoError):
        raise LowOrderKeyError() from None


def ed25519_public_from_seed(seed: bytes) -> bytes:
    """Return the Ed25519 public key for a 32-byte seed."""
    if len(seed) != KEY_BYTES:
        raise InvalidKeyError()
    public, _secret = _sodium.crypto_sign_seed_keypair(seed)
    return public  # type: ignore[no-any-return]


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """Sign ``message`` with the Ed25519 key of ``seed``; return 64 bytes."""
    return nacl.signing.SigningKey(seed).sign(message).signature


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature or raise :class:`BadSignatureError`."""
    if len(public) != KEY_BYTES:
        raise InvalidKeyError()
    if len(signature) != 64:
        raise BadSignatureError()
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, RuntimeError, ValueError):
        raise BadSignatureError() from None
    except nacl.exceptions.CryptoError:
        raise BadSignatureError() from None


def ed25519_pk_to_x25519(public: bytes) -> bytes:
    """Convert an Ed25519 public key to X25519 or raise :class:`InvalidKeyError`.

    libsodium validates the point (about 60 us); PyNaCl reports a failure as
    a bare ``RuntimeError``, mapped here to our error. Results for recent
    contacts are cached; public keys only, so the cache holds no secret.
    """
    if type(public) is not bytes or len(public) != KEY_BYTES:
        raise InvalidKeyError()
    return _convert_public(public)


@functools.lru_cache(maxsize=1024)
def _convert_public(public: bytes) -> bytes:
    try:
        converted: bytes = _sodium.crypto_sign_ed25519_pk_to_curve25519(public)
        return converted
    except (RuntimeError, nacl.exceptions.CryptoError, ValueError):
        raise InvalidKeyError() from None


def ed25519_seed_to_x25519(seed: bytes) -> bytes:
    """Convert an Ed25519 seed to the matching X25519 private key."""
    if len(seed) != KEY_BYTES:
        raise InvalidKeyError()
    public, secret = _sodium.crypto_sign_seed_keypair(seed)
    del public
    try:
        converted: bytes = _sodium.crypto_sign_ed25519_sk_to_curve25519(secret)
        return converted
    except (RuntimeError, nacl.exceptions.CryptoError):
        raise InvalidKeyError() from None


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """Derive ``length`` bytes with HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(
        ikm
    )


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """Return HMAC-SHA256 of ``message`` under ``key``."""
    return _hmac_digest(key, message, "sha256")


def hmac_sha256_pair(key: bytes, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """Return HMAC-SHA256 of two messages under one key (keyed once)."""
    keyed = _hmac_new(key, None, "sha256")
    other = keyed.copy()
    other.update(first)
    keyed.update(second)
    return other.digest(), keyed.digest()


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Encrypt with XChaCha20-Poly1305-IETF; return ciphertext followed by tag."""
    return _aead_encrypt(plaintext, ad, nonce, key)  # type: ignore[no-any-return]


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Decrypt XChaCha20-Poly1305-IETF or raise :class:`DecryptFailedError`."""
    try:
        return _aead_decrypt(ciphertext, ad, nonce, key)  # type: ignore[no-any-return]
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptFailedError() from None
