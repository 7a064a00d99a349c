"""The server's signed messages and fingerprint match the client SDK's."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from enrollment import crypto


def test_the_fingerprint_is_the_documented_function_of_the_key() -> None:
    key = bytes(range(32))
    digest = hashlib.sha256(b"AgentVault-fingerprint-v1" + key).digest()
    groups = [
        int.from_bytes(digest[i : i + 4], "big") % 100000 for i in range(0, 32, 4)
    ]

    value = crypto.fingerprint(key)

    assert value == " ".join(f"{g:05d}" for g in groups)
    assert len(value) == 47


def test_the_fingerprint_and_signed_prekey_message_match_the_client() -> None:
    safety = pytest.importorskip("agentvault_client.crypto.safety")
    keys = pytest.importorskip("agentvault_client.crypto.keys")
    for _ in range(20):
        identity = bytes(SigningKey.generate().verify_key)
        public = bytes(PrivateKey.generate().public_key)
        prekey_id = int.from_bytes(uuid.uuid4().bytes[:4], "big") or 1
        assert crypto.fingerprint(identity) == safety.fingerprint(identity)
        assert crypto.signed_prekey_message(
            prekey_id, public
        ) == keys.signed_prekey_message(prekey_id, public)


def test_a_signed_prekey_made_by_the_client_verifies_on_the_server() -> None:
    keys = pytest.importorskip("agentvault_client.crypto.keys")
    identity = keys.IdentityKeyPair.generate()
    signed = keys.SignedPrekey.generate(identity, 42)

    message = crypto.signed_prekey_message(42, signed.public_key)

    assert crypto.verify_signature(identity.public_key, message, signed.signature)
    assert not crypto.verify_signature(
        identity.public_key,
        crypto.signed_prekey_message(43, signed.public_key),
        signed.signature,
    )


def test_messages_are_domain_separated() -> None:
    challenge = b"\x01" * 32
    device_id = uuid.uuid4()
    auth = crypto.auth_challenge_message(challenge, device_id, "agentvault")
    proof = crypto.enrollment_proof_message("av1.x.y")

    assert auth == b"AgentVault-auth-v1" + challenge + device_id.bytes + b"agentvault"
    assert proof == b"AgentVault-enroll-v1" + hashlib.sha256(b"av1.x.y").digest()
    with pytest.raises(ValueError):
        crypto.signed_prekey_message(0, b"k" * 32)
