"""Run X3DH key agreement (initiator and responder) over X25519 and HKDF.

The identity keys are Ed25519 and are converted to X25519 for DH1 and DH2.
``SK = HKDF-SHA256(salt = 32 zero bytes, IKM = 0xFF*32 || DH1 || DH2 || DH3
[|| DH4], info = "AgentVault_X3DH_X25519_SHA256_v1")``, 32 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto.envelope import PrekeyFields
from agentvault_client.crypto.keys import (
    IdentityKeyPair,
    OneTimePrekey,
    PrekeyBundle,
    SignedPrekey,
)

__all__ = [
    "X3DH_INFO",
    "InitiatorResult",
    "derive_shared_secret",
    "initiate",
    "initiator_dh_outputs",
    "respond",
    "responder_dh_outputs",
]

#: HKDF info of the X3DH key derivation.
X3DH_INFO = b"AgentVault_X3DH_X25519_SHA256_v1"
_F = b"\xff" * 32
_ZERO_SALT = bytes(32)


def derive_shared_secret(
    dh_outputs: Sequence[bytes], *, info: bytes = X3DH_INFO, length: int = 32
) -> bytes:
    """Return HKDF(salt=0*32, IKM=0xFF*32 || DH1 || ... , info, length)."""
    return prim.hkdf_sha256(
        _F + b"".join(dh_outputs), salt=_ZERO_SALT, info=info, length=length
    )


def initiator_dh_outputs(
    identity_private: bytes,
    base_private: bytes,
    remote_identity: bytes,
    remote_signed_prekey: bytes,
    remote_one_time_prekey: bytes | None,
) -> list[bytes]:
    """Return ``[DH1, DH2, DH3(, DH4)]`` as the initiator computes them (X25519)."""
    outputs = [
        prim.x25519(identity_private, remote_signed_prekey),
        prim.x25519(base_private, remote_identity),
        prim.x25519(base_private, remote_signed_prekey),
    ]
    if remote_one_time_prekey is not None:
        outputs.append(prim.x25519(base_private, remote_one_time_prekey))
    return outputs


def responder_dh_outputs(
    identity_private: bytes,
    signed_prekey_private: bytes,
    one_time_prekey_private: bytes | None,
    remote_identity: bytes,
    remote_base_key: bytes,
) -> list[bytes]:
    """Return ``[DH1, DH2, DH3(, DH4)]`` as the responder computes them (X25519)."""
    outputs = [
        prim.x25519(signed_prekey_private, remote_identity),
        prim.x25519(identity_private, remote_base_key),
        prim.x25519(signed_prekey_private, remote_base_key),
    ]
    if one_time_prekey_private is not None:
        outputs.append(prim.x25519(one_time_prekey_private, remote_base_key))
    return outputs


@dataclass(frozen=True, slots=True, repr=False)
class InitiatorResult:
    """Hold the initiator's X3DH secret and the fields its first message carries."""

    shared_secret: bytes
    fields: PrekeyFields

    def __repr__(self) -> str:
        """Return ids only."""
        return (
            f"InitiatorResult(signed_prekey_id={self.fields.signed_prekey_id}, "
            f"one_time_prekey_id={self.fields.one_time_prekey_id})"
        )


def initiate(identity: IdentityKeyPair, bundle: PrekeyBundle) -> InitiatorResult:
    """Verify ``bundle`` and run X3DH as the initiator.

    Raise :class:`BadSignatureError` before any DH when the signed prekey's
    signature does not verify, and :class:`InvalidKeyError` or
    :class:`LowOrderKeyError` for unusable keys. The ephemeral private key is
    dropped on return.
    """
    bundle.verify()
    remote_identity = prim.ed25519_pk_to_x25519(bundle.identity_key)
    base_private, base_public = prim.x25519_generate()
    outputs = initiator_dh_outputs(
        identity.x25519_private,
        base_private,
        remote_identity,
        bundle.signed_prekey,
        bundle.one_time_prekey,
    )
    fields = PrekeyFields(
        identity.public_key,
        base_public,
        bundle.signed_prekey_id,
        bundle.one_time_prekey_id if bundle.one_time_prekey is not None else None,
    )
    return InitiatorResult(derive_shared_secret(outputs), fields)


def respond(
    identity: IdentityKeyPair,
    signed_prekey: SignedPrekey,
    one_time_prekey: OneTimePrekey | None,
    fields: PrekeyFields,
) -> bytes:
    """Run X3DH as the responder for a prekey message's ``fields``; return SK."""
    remote_identity = prim.ed25519_pk_to_x25519(fields.identity_key)
    outputs = responder_dh_outputs(
        identity.x25519_private,
        signed_prekey.private_key,
        None if one_time_prekey is None else one_time_prekey.private_key,
        remote_identity,
        fields.base_key,
    )
    return derive_shared_secret(outputs)
