"""Provide identity keys, signed and one-time prekeys, and prekey bundles.

A device's identity is one Ed25519 key. It signs the signed prekey over a
domain-separated message, and it is converted to X25519 for X3DH. Public
keys travel as standard, padded base64 in JSON.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Any

from agentvault_client.crypto import primitives as prim
from agentvault_client.errors import BadSignatureError, InvalidKeyError, ProtocolError

__all__ = [
    "MAX_PREKEY_ID",
    "SPK_SIGNATURE_DOMAIN",
    "IdentityKeyPair",
    "OneTimePrekey",
    "PrekeyBundle",
    "SignedPrekey",
    "b64decode",
    "b64encode",
    "make_prekey_upload",
    "signed_prekey_message",
    "verify_signed_prekey",
]

#: Domain label that opens every signed-prekey signature message.
SPK_SIGNATURE_DOMAIN = b"AgentVault-spk-v1"
#: Type byte of an X25519 public key in ``Encode(PK)`` (the value Signal uses).
X25519_TYPE = b"\x05"
#: Prekey ids are unsigned 32-bit; 0 means "no prekey" on the wire.
MAX_PREKEY_ID = 0xFFFFFFFF

_u32 = struct.Struct(">I")


def b64encode(data: bytes) -> str:
    """Encode bytes as standard, padded base64 text."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, length: int | None = None) -> bytes:
    """Decode strict standard base64, optionally checking the decoded length."""
    if not isinstance(text, str):
        raise ProtocolError("A base64 field is not a string.")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProtocolError("A base64 field is not valid base64.") from None
    if length is not None and len(data) != length:
        raise ProtocolError("A base64 field has the wrong length.")
    return data


def signed_prekey_message(prekey_id: int, public_key: bytes) -> bytes:
    """Return the exact bytes an identity key signs for a signed prekey.

    ``b"AgentVault-spk-v1" || u32be(prekey_id) || 0x05 || public_key``
    """
    if not 0 < prekey_id <= MAX_PREKEY_ID:
        raise ProtocolError("The prekey id is out of range.")
    if len(public_key) != prim.KEY_BYTES:
        raise InvalidKeyError()
    return SPK_SIGNATURE_DOMAIN + _u32.pack(prekey_id) + X25519_TYPE + public_key


def verify_signed_prekey(
    identity_key: bytes, prekey_id: int, public_key: bytes, signature: bytes
) -> None:
    """Verify a signed prekey's signature or raise :class:`BadSignatureError`."""
    message = signed_prekey_message(prekey_id, public_key)
    prim.ed25519_verify(identity_key, message, signature)


class IdentityKeyPair:
    """Hold a device's Ed25519 identity key and its X25519 form."""

    __slots__ = ("_seed", "_x25519_private", "_x25519_public", "public_key")

    def __init__(self, seed: bytes) -> None:
        """Load the identity key from its 32-byte Ed25519 seed."""
        if len(seed) != prim.KEY_BYTES:
            raise InvalidKeyError()
        self._seed = seed
        self.public_key: bytes = prim.ed25519_public_from_seed(seed)
        self._x25519_private: bytes = prim.ed25519_seed_to_x25519(seed)
        self._x25519_public: bytes = prim.ed25519_pk_to_x25519(self.public_key)

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        """Generate a fresh identity key."""
        return cls(prim.random_bytes(prim.KEY_BYTES))

    @property
    def seed(self) -> bytes:
        """Return the secret 32-byte Ed25519 seed (for sealed storage only)."""
        return self._seed

    @property
    def x25519_private(self) -> bytes:
        """Return the X25519 private key converted from the seed."""
        return self._x25519_private

    @property
    def x25519_public(self) -> bytes:
        """Return the X25519 public key converted from the Ed25519 key."""
        return self._x25519_public

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with the identity key."""
        return prim.ed25519_sign(self._seed, message)

    def __repr__(self) -> str:
        """Return a representation without key material."""
        return "IdentityKeyPair(<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class SignedPrekey:
    """Hold a signed prekey: its id, X25519 key pair and the signature."""

    prekey_id: int
    private_key: bytes
    public_key: bytes
    signature: bytes
    created_at: int = 0

    @classmethod
    def generate(
        cls, identity: IdentityKeyPair, prekey_id: int, *, created_at: int = 0
    ) -> SignedPrekey:
        """Generate a signed prekey with ``prekey_id`` signed by ``identity``."""
        private, public = prim.x25519_generate()
        signature = identity.sign(signed_prekey_message(prekey_id, public))
        return cls(prekey_id, private, public, signature, created_at)

    def to_upload(self) -> dict[str, Any]:
        """Return ``{id, public_key, signature}`` as the server expects it."""
        return {
            "id": self.prekey_id,
            "public_key": b64encode(self.public_key),
            "signature": b64encode(self.signature),
        }

    def __repr__(self) -> str:
        """Return a representation without key material."""
        return f"SignedPrekey(prekey_id={self.prekey_id})"


@dataclass(frozen=True, slots=True, repr=False)
class OneTimePrekey:
    """Hold a one-time prekey: its id and X25519 key pair."""

    prekey_id: int
    private_key: bytes
    public_key: bytes

    @classmethod
    def generate(cls, prekey_id: int) -> OneTimePrekey:
        """Generate a one-time prekey with ``prekey_id``."""
        if not 0 < prekey_id <= MAX_PREKEY_ID:
            raise ProtocolError("The prekey id is out of range.")
        private, public = prim.x25519_generate()
        return cls(prekey_id, private, public)

    def to_upload(self) -> dict[str, Any]:
        """Return ``{id, public_key}`` as the server expects it."""
        return {"id": self.prekey_id, "public_key": b64encode(self.public_key)}

    def __repr__(self) -> str:
        """Return a representation without key material."""
        return f"OneTimePrekey(prekey_id={self.prekey_id})"


def make_prekey_upload(
    signed_prekey: SignedPrekey, one_time_prekeys: list[OneTimePrekey]
) -> dict[str, Any]:
    """Return the body of ``PUT /api/v1/devices/me/prekeys``."""
    return {
        "signed_prekey": signed_prekey.to_upload(),
        "one_time_prekeys": [opk.to_upload() for opk in one_time_prekeys],
    }


@dataclass(frozen=True, slots=True, repr=False)
class PrekeyBundle:
    """Hold a peer device's published keys, as the server hands them out."""

    device_id: str
    identity_key: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    one_time_prekey_id: int | None = None
    one_time_prekey: bytes | None = field(default=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrekeyBundle:
        """Parse ``{device_id, identity_key, signed_prekey, one_time_prekey}``.

        The signature is not checked here; :func:`verify` does that.
        """
        try:
            device_id = data["device_id"]
            identity_key = data["identity_key"]
            spk = data["signed_prekey"]
            opk = data.get("one_time_prekey")
            spk_id = spk["id"]
            spk_public, spk_signature = spk["public_key"], spk["signature"]
            opk_id = None if opk is None else opk["id"]
            opk_public = None if opk is None else opk["public_key"]
        except (KeyError, TypeError, AttributeError):
            raise ProtocolError("The prekey bundle is missing a field.") from None
        for prekey_id in (spk_id, opk_id):
            if prekey_id is None:
                continue
            if not isinstance(prekey_id, int) or isinstance(prekey_id, bool):
                raise ProtocolError("A prekey id is not an integer.")
            if not 0 < prekey_id <= MAX_PREKEY_ID:
                raise ProtocolError("A prekey id is out of range.")
        if not isinstance(device_id, str) or not device_id:
            raise ProtocolError("The bundle's device id is not a string.")
        return cls(
            device_id=device_id,
            identity_key=b64decode(identity_key, length=32),
            signed_prekey_id=spk_id,
            signed_prekey=b64decode(spk_public, length=32),
            signed_prekey_signature=b64decode(spk_signature, length=64),
            one_time_prekey_id=opk_id,
            one_time_prekey=(
                None if opk_public is None else b64decode(opk_public, length=32)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the bundle in the server's JSON shape."""
        opk: dict[str, Any] | None = None
        if self.one_time_prekey is not None:
            opk = {
                "id": self.one_time_prekey_id,
                "public_key": b64encode(self.one_time_prekey),
            }
        return {
            "device_id": self.device_id,
            "identity_key": b64encode(self.identity_key),
            "signed_prekey": {
                "id": self.signed_prekey_id,
                "public_key": b64encode(self.signed_prekey),
                "signature": b64encode(self.signed_prekey_signature),
            },
            "one_time_prekey": opk,
        }

    def __repr__(self) -> str:
        """Return a representation with ids only."""
        return (
            f"PrekeyBundle(device_id={self.device_id!r}, "
            f"signed_prekey_id={self.signed_prekey_id}, "
            f"one_time_prekey_id={self.one_time_prekey_id})"
        )

    def verify(self) -> None:
        """Check the signed prekey's signature or raise :class:`BadSignatureError`."""
        try:
            verify_signed_prekey(
                self.identity_key,
                self.signed_prekey_id,
                self.signed_prekey,
                self.signed_prekey_signature,
            )
        except InvalidKeyError:
            raise BadSignatureError() from None
