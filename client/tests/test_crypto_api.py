"""Check the public surface: errors, bundles, fingerprints and secret hygiene."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest
from avclient_helpers import established_pair

from agentvault_client import errors
from agentvault_client.crypto import (
    IdentityKeyPair,
    LocalDevice,
    OneTimePrekey,
    PrekeyBundle,
    SessionRecord,
    SignedPrekey,
    fingerprint,
    format_safety_number,
    make_prekey_upload,
    safety_number,
    safety_numbers_match,
    verify_signed_prekey,
)
from agentvault_client.crypto import envelope as env
from agentvault_client.errors import BadSignatureError, ProtocolError

CLIENT_DIR = Path(__file__).resolve().parents[1]


def test_every_error_belongs_to_the_sdk_tree_with_a_stable_code() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    codes = set()
    for cls in classes:
        assert issubclass(cls, errors.SdkError)
        assert cls.__name__.endswith("Error")
        assert re.fullmatch(r"[a-z][a-z_]*", cls.code)
        codes.add(cls.code)
    assert len(codes) == len(classes)
    for parent in (errors.AuthError, errors.ProtocolError, errors.CryptoError):
        assert parent.__bases__ == (errors.SdkError,)
    assert issubclass(errors.DecryptFailedError, errors.CryptoError)
    assert issubclass(errors.BadEnvelopeError, errors.ProtocolError)
    assert errors.IdentityChangedError.code == "identity_changed"


def _secret_forms(secret: bytes) -> list[str]:
    return [secret.hex(), repr(secret)[2:-1], base64.b64encode(secret).decode()]


def test_no_repr_shows_key_material() -> None:
    alice, bob = established_pair()
    identity = alice.local.identity
    record = alice.records["bob-device"]
    state = record.states[0]
    spk = SignedPrekey.generate(identity, 3)
    opk = OneTimePrekey.generate(4)
    secrets = [
        identity.seed,
        identity.public_key,
        identity.x25519_private,
        state.rk,
        state.cks,
        state.dhs_private,
        spk.private_key,
        spk.public_key,
        opk.private_key,
    ]
    objects = [
        identity,
        alice.local,
        record,
        state,
        spk,
        opk,
        record.skipped,
        alice.bundle(),
        env.parse(alice.send(bob, b"x")),
    ]
    for obj in objects:
        text = repr(obj) + str(obj)
        for secret in secrets:
            for form in _secret_forms(secret):
                assert form not in text, type(obj).__name__


def test_error_messages_carry_no_key_material() -> None:
    alice, bob = established_pair()
    data = bytearray(alice.send(bob, b"x"))
    data[-1] ^= 1
    with pytest.raises(errors.SdkError) as info:
        bob.receive(alice, bytes(data))
    text = str(info.value) + repr(info.value)
    state = bob.records["alice-device"].states[0]
    for secret in (state.rk, state.ckr, bytes(data[3:35])):
        for form in _secret_forms(secret):
            assert form not in text


def test_importing_the_sdk_reads_no_environment_and_installs_no_handlers() -> None:
    script = """
import logging, os, sys
import nacl.bindings, nacl.pwhash, nacl.signing, sqlite3
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
# Third-party transports read their own settings at import; the property is
# about this package's code, so they are imported before the spy.
import httpx, websockets.asyncio.client, websockets.exceptions
reads = []
class Spy(type(os.environ)):
    def __getitem__(self, key):
        reads.append(key)
        return super().__getitem__(key)
    def get(self, key, default=None):
        reads.append(key)
        return super().get(key, default)
spy = Spy(os.environ._data, os.environ.encodekey, os.environ.decodekey,
          os.environ.encodevalue, os.environ.decodevalue)
os.environ = spy
before = list(logging.getLogger().handlers)
import agentvault_client, agentvault_client.crypto, agentvault_client.store
import agentvault_client.crypto.session, agentvault_client.crypto.safety
assert reads == [], reads
assert logging.getLogger().handlers == before
for name, logger in logging.Logger.manager.loggerDict.items():
    if name.startswith("agentvault_client") and isinstance(logger, logging.Logger):
        assert not logger.handlers, name
print("clean")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=CLIENT_DIR,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_the_fingerprint_follows_its_documented_definition() -> None:
    key = bytes(range(32))
    digest = hashlib.sha256(b"AgentVault-fingerprint-v1" + key).digest()
    expected = " ".join(
        f"{int.from_bytes(digest[i : i + 4], 'big') % 100000:05d}"
        for i in range(0, 32, 4)
    )
    assert fingerprint(key) == expected
    assert re.fullmatch(r"(\d{5} ){7}\d{5}", expected)
    assert fingerprint(bytes(range(1, 33))) != expected


def test_the_safety_number_is_the_same_on_both_sides_and_tracks_keys() -> None:
    alice, bob = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    ours = safety_number(alice.public_key, "dev-a", bob.public_key, "dev-b")
    theirs = safety_number(bob.public_key, "dev-b", alice.public_key, "dev-a")
    assert ours == theirs
    assert re.fullmatch(r"\d{60}", ours)
    other = IdentityKeyPair.generate()
    assert safety_number(alice.public_key, "dev-a", other.public_key, "dev-b") != ours
    assert safety_numbers_match(ours, format_safety_number(ours)) is True
    assert safety_numbers_match(ours, "0" * 60) is False


def test_the_prekey_upload_verifies_against_the_documented_message() -> None:
    identity = IdentityKeyPair.generate()
    spk = SignedPrekey.generate(identity, 7)
    upload = make_prekey_upload(
        spk, [OneTimePrekey.generate(1), OneTimePrekey.generate(2)]
    )
    signed = upload["signed_prekey"]
    public = base64.b64decode(signed["public_key"])
    signature = base64.b64decode(signed["signature"])
    message = b"AgentVault-spk-v1" + (7).to_bytes(4, "big") + b"\x05" + public
    nacl.signing.VerifyKey(identity.public_key).verify(message, signature)
    verify_signed_prekey(identity.public_key, 7, public, signature)
    with pytest.raises(BadSignatureError):
        verify_signed_prekey(identity.public_key, 8, public, signature)
    assert [k["id"] for k in upload["one_time_prekeys"]] == [1, 2]


def test_a_bundle_from_the_server_parses_and_round_trips() -> None:
    alice, bob = established_pair()
    bundle = bob.bundle()
    data = bundle.to_dict()
    assert PrekeyBundle.from_dict(data) == bundle
    data["one_time_prekey"] = None
    parsed = PrekeyBundle.from_dict(data)
    assert parsed.one_time_prekey is None and parsed.one_time_prekey_id is None
    record = SessionRecord.from_bundle(alice.local, parsed)
    assert (
        env.parse(record.encrypt(alice.local, b"x")).prekey.one_time_prekey_id is None
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("identity_key"),
        lambda d: d.update(identity_key="not base64!"),
        lambda d: d.update(identity_key=base64.b64encode(bytes(31)).decode()),
        lambda d: d["signed_prekey"].update(id=True),
        lambda d: d["signed_prekey"].update(id=0),
        lambda d: d["signed_prekey"].update(id=2**32),
        lambda d: d.update(device_id=""),
    ],
)
def test_a_malformed_bundle_is_refused(change: object) -> None:
    _alice, bob = established_pair()
    data = bob.bundle().to_dict()
    change(data)  # type: ignore[operator]
    with pytest.raises(ProtocolError):
        PrekeyBundle.from_dict(data)


def test_local_device_and_records_reject_bad_ids() -> None:
    identity = IdentityKeyPair.generate()
    assert "dev" in repr(LocalDevice(identity, "dev"))
    with pytest.raises(ProtocolError):
        SessionRecord("", identity.public_key)
    with pytest.raises(ProtocolError):
        SessionRecord("x" * 256, identity.public_key)
