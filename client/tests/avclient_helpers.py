"""Build devices, sessions and a simulated relay for the client crypto tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from agentvault_client.crypto import (
    IdentityKeyPair,
    LocalDevice,
    OneTimePrekey,
    PrekeyBundle,
    SessionRecord,
    SignedPrekey,
)

#: The project root is the parent of ``client/``; vectors live beside it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = PROJECT_ROOT.parent / "shared" / "vectors"


def property_settings(max_examples: int) -> settings:
    """Return deterministic, bounded Hypothesis settings for one test."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


def load_vectors(*parts: str) -> Any:
    """Return a JSON vector file from ``../shared/vectors``, or skip the test."""
    path = VECTORS_DIR.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"test vectors not available: {path} is absent")
    return json.loads(path.read_text(encoding="utf-8"))


class PrekeyPool:
    """Hold a device's prekey private keys in memory (a PrekeySource)."""

    def __init__(self) -> None:
        """Create an empty pool."""
        self.signed: dict[int, SignedPrekey] = {}
        self.one_time: dict[int, OneTimePrekey] = {}

    def signed_prekey(self, prekey_id: int) -> SignedPrekey | None:
        """Return a signed prekey by id."""
        return self.signed.get(prekey_id)

    def one_time_prekey(self, prekey_id: int) -> OneTimePrekey | None:
        """Return a one-time prekey by id."""
        return self.one_time.get(prekey_id)


@dataclass
class Device:
    """Bundle a local device with its prekeys and session records."""

    local: LocalDevice
    prekeys: PrekeyPool = field(default_factory=PrekeyPool)
    records: dict[str, SessionRecord] = field(default_factory=dict)
    next_opk: int = 1

    @classmethod
    def create(cls, device_id: str) -> Device:
        """Create a device with a signed prekey (id 1)."""
        device = cls(LocalDevice(IdentityKeyPair.generate(), device_id))
        spk = SignedPrekey.generate(device.local.identity, 1)
        device.prekeys.signed[1] = spk
        return device

    @property
    def device_id(self) -> str:
        """Return the device id."""
        return self.local.device_id

    def bundle(self, *, with_one_time: bool = True) -> PrekeyBundle:
        """Publish a bundle; each call hands out a fresh one-time prekey."""
        spk = self.prekeys.signed[max(self.prekeys.signed)]
        opk = None
        if with_one_time:
            opk = OneTimePrekey.generate(self.next_opk)
            self.next_opk += 1
            self.prekeys.one_time[opk.prekey_id] = opk
        return PrekeyBundle(
            self.device_id,
            self.local.identity.public_key,
            spk.prekey_id,
            spk.public_key,
            spk.signature,
            None if opk is None else opk.prekey_id,
            None if opk is None else opk.public_key,
        )

    def start(self, peer: Device, *, with_one_time: bool = True) -> SessionRecord:
        """Start (or add) a session toward ``peer`` from its bundle."""
        bundle = peer.bundle(with_one_time=with_one_time)
        record = self.records.get(peer.device_id)
        if record is None:
            record = SessionRecord.from_bundle(self.local, bundle)
            self.records[peer.device_id] = record
        else:
            record.initiate(self.local, bundle)
        return record

    def send(self, peer: Device, plaintext: bytes) -> bytes:
        """Encrypt for ``peer`` with the existing session."""
        return self.records[peer.device_id].encrypt(self.local, plaintext)

    def receive(self, sender: Device, data: bytes) -> bytes:
        """Decrypt from ``sender``, creating a record for a first prekey message."""
        record = self.records.get(sender.device_id)
        if record is None:
            record = SessionRecord.for_incoming(sender.device_id, data)
            plaintext = record.decrypt(self.local, data, self.prekeys)
            self.records[sender.device_id] = record
            return plaintext
        return record.decrypt(self.local, data, self.prekeys)

    def snapshot(self, peer: Device) -> bytes:
        """Return the serialized record toward ``peer``."""
        return self.records[peer.device_id].serialize()


def established_pair() -> tuple[Device, Device]:
    """Return Alice and Bob after one message each way."""
    alice, bob = Device.create("alice-device"), Device.create("bob-device")
    alice.start(bob)
    assert bob.receive(alice, alice.send(bob, b"hello")) == b"hello"
    assert alice.receive(bob, bob.send(alice, b"hi")) == b"hi"
    return alice, bob
