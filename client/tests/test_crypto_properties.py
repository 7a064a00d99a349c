"""Property tests over random conversations through a hostile simulated relay.

The relay drops, duplicates, reorders and tampers with envelopes; devices
save and reload their records at random steps. Hypothesis runs derandomized
with bounded example counts so the suite is deterministic and quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from avclient_helpers import Device, established_pair, property_settings
from hypothesis import given
from hypothesis import strategies as st

from agentvault_client.crypto import SessionRecord, ratchet
from agentvault_client.errors import (
    DecryptFailedError,
    DuplicateMessageError,
    SdkError,
)

# One step of a script: (kind, who, a, b) with small integers.
step = st.tuples(
    st.sampled_from(["send", "deliver", "deliver", "dup", "drop", "tamper", "reload"]),
    st.booleans(),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10_000),
)


@dataclass
class Relay:
    """Carry envelopes between two devices, misbehaving on request."""

    alice: Device
    bob: Device
    in_flight: list[tuple[bool, bytes, bytes]] = field(default_factory=list)
    delivered: list[tuple[bool, bytes, bytes]] = field(default_factory=list)
    received: dict[bytes, int] = field(default_factory=dict)
    dropped: set[bytes] = field(default_factory=set)
    counter: int = 0

    def devices(self, from_alice: bool) -> tuple[Device, Device]:
        """Return (sender, recipient)."""
        return (self.alice, self.bob) if from_alice else (self.bob, self.alice)

    def send(self, from_alice: bool, count: int) -> None:
        """Queue ``count`` new messages from one side."""
        sender, recipient = self.devices(from_alice)
        record = sender.records.get(recipient.device_id)
        if record is None or not record.can_send:
            return
        for _ in range(count):
            self.counter += 1
            text = b"message %d" % self.counter
            self.in_flight.append((from_alice, text, sender.send(recipient, text)))

    def deliver(self, index: int) -> None:
        """Deliver one in-flight envelope (any order)."""
        from_alice, text, data = self.in_flight.pop(index % len(self.in_flight))
        sender, recipient = self.devices(from_alice)
        assert recipient.receive(sender, data) == text
        self.received[text] = self.received.get(text, 0) + 1
        self.delivered.append((from_alice, text, data))

    def duplicate(self, index: int) -> None:
        """Deliver an already delivered envelope again."""
        from_alice, _text, data = self.delivered[index % len(self.delivered)]
        sender, recipient = self.devices(from_alice)
        record = recipient.records[sender.device_id]
        before = record.serialize()
        with pytest.raises((DuplicateMessageError, DecryptFailedError)):
            recipient.receive(sender, data)
        assert record.serialize() == before

    def tamper(self, index: int, bit: int) -> None:
        """Deliver a copy with one flipped bit; the original stays in flight."""
        from_alice, _text, data = self.in_flight[index % len(self.in_flight)]
        sender, recipient = self.devices(from_alice)
        flipped = bytearray(data)
        flipped[(bit // 8) % len(data)] ^= 1 << (bit % 8)
        record = recipient.records.get(sender.device_id)
        before = None if record is None else record.serialize()
        with pytest.raises(SdkError):
            recipient.receive(sender, bytes(flipped))
        after = recipient.records.get(sender.device_id)
        assert (None if after is None else after.serialize()) == before

    def reload(self, device: Device) -> None:
        """Save and reload every record of ``device`` from bytes."""
        for peer, record in list(device.records.items()):
            blob = record.serialize()
            clone = SessionRecord.deserialize(blob)
            assert clone.serialize() == blob
            device.records[peer] = clone

    def run(self, script: list[tuple[str, bool, int, int]]) -> None:
        """Play a script, then deliver everything left in random order."""
        for kind, who, a, b in script:
            if kind == "send":
                self.send(who, 1 + a % 5)
            elif kind == "deliver" and self.in_flight:
                self.deliver(a)
            elif kind == "dup" and self.delivered:
                self.duplicate(a)
            elif kind == "drop" and self.in_flight:
                self.dropped.add(self.in_flight.pop(a % len(self.in_flight))[1])
            elif kind == "tamper" and self.in_flight:
                self.tamper(a, b)
            elif kind == "reload":
                self.reload(self.alice if who else self.bob)
        while self.in_flight:
            self.deliver(len(self.in_flight) * 7919)


@property_settings(max_examples=200)
@given(script=st.lists(step, max_size=60))
def test_every_message_is_decrypted_exactly_once_whatever_the_relay_does(
    script: list[tuple[str, bool, int, int]],
) -> None:
    alice, bob = Device.create("alice-device"), Device.create("bob-device")
    alice.start(bob)
    relay = Relay(alice, bob)
    relay.send(True, 1)
    relay.run(script)
    sent = set(range(1, relay.counter + 1))
    delivered = {int(t.split()[1]) for t in relay.received}
    dropped = {int(t.split()[1]) for t in relay.dropped}
    assert delivered | dropped == sent
    assert not delivered & dropped
    assert all(count == 1 for count in relay.received.values())


@property_settings(max_examples=60)
@given(script=st.lists(step, max_size=30), extra=st.integers(0, 20))
def test_a_captured_state_cannot_decrypt_earlier_messages(
    script: list[tuple[str, bool, int, int]], extra: int, monkeypatch_keys: list[bytes]
) -> None:
    alice, bob = established_pair()
    relay = Relay(alice, bob)
    relay.run(script)
    relay.send(True, 1 + extra % 4)
    relay.run([])

    captured = bob.snapshot(alice)
    thief = SessionRecord.deserialize(captured)
    for from_alice, _text, data in relay.delivered:
        if not from_alice:
            continue
        with pytest.raises((DuplicateMessageError, DecryptFailedError)):
            thief.decrypt(bob.local, data)

    # No secret in the captured state leads forward to an earlier message key.
    used = set(monkeypatch_keys)
    state = SessionRecord.deserialize(captured)
    for st_ in state.states:
        for secret in (st_.rk, st_.cks, st_.ckr, st_.dhs_private):
            if secret is None:
                continue
            assert secret not in used
            ck = secret
            for _ in range(50):
                mk, ck = ratchet.kdf_ck(ck)
                assert mk not in used


@pytest.fixture
def monkeypatch_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every message key that opened a message."""
    used: list[bytes] = []
    original = ratchet._aead_decrypt

    def recording(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> bytes:
        result = original(key, nonce, data, ad)
        used.append(key)
        return result

    monkeypatch.setattr(ratchet, "_aead_decrypt", recording)
    return used


@property_settings(max_examples=60)
@given(script=st.lists(step, max_size=30))
def test_a_cloned_state_stops_decrypting_after_new_ratchet_keys(
    script: list[tuple[str, bool, int, int]],
) -> None:
    alice, bob = established_pair()
    relay = Relay(alice, bob)
    relay.run(script)
    # Make Bob's last action a receive, so his sending key is the clone's.
    relay.send(True, 1)
    relay.run([])
    eve = SessionRecord.deserialize(bob.snapshot(alice))

    def exchange(sender: Device, recipient: Device, text: bytes) -> bytes:
        data = sender.send(recipient, text)
        assert recipient.receive(sender, data) == text
        return data

    exchange(bob, alice, b"b1")
    a1 = exchange(alice, bob, b"a1")
    assert eve.decrypt(bob.local, a1) == b"a1"  # positive control
    exchange(bob, alice, b"b2")
    for i in range(3):
        later = exchange(alice, bob, b"a%d" % (i + 2))
        with pytest.raises(DecryptFailedError):
            eve.decrypt(bob.local, later)
        exchange(bob, alice, b"b%d" % (i + 3))


@property_settings(max_examples=60)
@given(
    script=st.lists(step, max_size=30),
    gap=st.integers(ratchet.MAX_SKIP + 1, 2**32 - 1),
)
def test_a_forged_huge_counter_is_refused_with_the_state_unchanged(
    script: list[tuple[str, bool, int, int]], gap: int
) -> None:
    from agentvault_client.crypto import envelope as env
    from agentvault_client.errors import TooManySkippedError

    alice, bob = established_pair()
    relay = Relay(alice, bob)
    relay.run(script)
    record = bob.records["alice-device"]
    state = record.states[0]
    before = record.serialize()
    forged_n = min(state.nr + gap, 2**32 - 1)
    forged = env.ratchet_prefix(state.dhr, 0, forged_n) + bytes(24 + 176)
    with pytest.raises(TooManySkippedError):
        record.decrypt(bob.local, forged)
    assert record.serialize() == before
