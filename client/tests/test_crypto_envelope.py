"""Check the v1 envelope layout, its strict parser, padding and tamper refusal."""

from __future__ import annotations

import pytest
from avclient_helpers import Device, established_pair

from agentvault_client.crypto import SessionRecord
from agentvault_client.crypto import envelope as env
from agentvault_client.errors import (
    BadEnvelopeError,
    CryptoError,
    ProtocolError,
    SdkError,
    UnsupportedVersionError,
)


def _first_message() -> tuple[Device, Device, bytes]:
    alice, bob = Device.create("alice-device"), Device.create("bob-device")
    alice.start(bob)
    return alice, bob, alice.send(bob, b"first message")


def test_a_ratchet_envelope_has_the_documented_layout() -> None:
    alice, bob = established_pair()
    data = alice.send(bob, b"x" * 10)
    state = alice.records["bob-device"].states[0]
    assert data[:3] == b"\x01\x02\x00"
    assert data[3:35] == state.dhs_public
    assert int.from_bytes(data[35:39], "big") == state.pn
    assert int.from_bytes(data[39:43], "big") == state.ns - 1
    assert len(data) == 43 + 24 + 160 + 16


def test_a_prekey_envelope_has_the_documented_layout() -> None:
    alice, _bob, data = _first_message()
    state = alice.records["bob-device"].states[0]
    assert data[:3] == b"\x01\x01\x00"
    assert data[3:35] == alice.local.identity.public_key
    assert data[35:67] == state.base_key
    assert int.from_bytes(data[67:71], "big") == 1
    assert int.from_bytes(data[71:75], "big") == 1
    assert data[75:107] == state.dhs_public
    assert int.from_bytes(data[107:111], "big") == 0
    assert int.from_bytes(data[111:115], "big") == 0
    assert len(data) == 115 + 24 + 160 + 16


@pytest.mark.parametrize(
    ("size", "padded"), [(0, 160), (1, 160), (159, 160), (160, 320), (1024, 1120)]
)
def test_plaintext_is_padded_to_a_160_byte_boundary(size: int, padded: int) -> None:
    data = b"\x00" * size
    result = env.pad(data)
    assert len(result) == padded
    assert result[size] == 0x80
    assert env.unpad(result) == data


def test_bad_padding_is_refused() -> None:
    for bad in (bytes(160), b"\x01" * 160, b"\x80" + bytes(319)):
        with pytest.raises(BadEnvelopeError):
            env.unpad(bad)


def test_unknown_versions_types_and_flags_are_refused_before_any_crypto() -> None:
    alice, bob = established_pair()
    data = bytearray(alice.send(bob, b"x"))
    for version in (0x00, 0x02, 0xFF):
        with pytest.raises(UnsupportedVersionError) as info:
            env.parse(bytes([version]) + bytes(data[1:]))
        assert info.value.code == "unsupported_version"
    for kind in (0x00, 0x03, 0xFF):
        with pytest.raises(BadEnvelopeError):
            env.parse(bytes(data[:1]) + bytes([kind]) + bytes(data[2:]))
    for flags in (0x01, 0x02, 0x80):
        with pytest.raises(BadEnvelopeError) as info:
            env.parse(bytes(data[:2]) + bytes([flags]) + bytes(data[3:]))
        assert info.value.code == "bad_envelope"


def test_wrong_lengths_are_refused() -> None:
    alice, bob = established_pair()
    data = alice.send(bob, b"x")
    for bad in (b"", data[:2], data[:-1], data + b"\x00", data[:60], data + bytes(159)):
        with pytest.raises(BadEnvelopeError):
            env.parse(bad)
    with pytest.raises(BadEnvelopeError):
        env.parse(data[:3] + bytes(env.MAX_ENVELOPE_BYTES))


def test_a_prekey_envelope_without_signed_prekey_id_is_refused() -> None:
    _alice, _bob, data = _first_message()
    with pytest.raises(BadEnvelopeError):
        env.parse(data[:67] + bytes(4) + data[71:])


def test_an_oversized_plaintext_is_refused() -> None:
    alice, bob = established_pair()
    with pytest.raises(BadEnvelopeError):
        alice.send(bob, bytes(env.MAX_PLAINTEXT_BYTES + 1))
    big = bytes(env.MAX_PLAINTEXT_BYTES)
    assert bob.receive(alice, alice.send(bob, big)) == big


def test_base64_round_trip_is_strict() -> None:
    alice, bob = established_pair()
    data = alice.send(bob, b"x")
    text = env.encode_b64(data)
    assert env.decode_b64(text) == data
    with pytest.raises(BadEnvelopeError):
        env.decode_b64(text[:-2] + "!!")


def _variants(data: bytes) -> list[bytes]:
    out = []
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            out.append(bytes(flipped))
    out.extend(data[:cut] for cut in range(len(data)))
    out.append(data + b"\x00")
    return out


def test_every_bit_flip_and_truncation_of_a_prekey_envelope_is_refused() -> None:
    _alice, bob, data = _first_message()
    record = SessionRecord.for_incoming("alice-device", data)
    before = record.serialize()
    one_time = dict(bob.prekeys.one_time)
    for variant in _variants(data):
        with pytest.raises(SdkError) as info:
            record.decrypt(bob.local, variant, bob.prekeys)
        assert isinstance(info.value, (ProtocolError, CryptoError))
        assert record.serialize() == before
    assert bob.prekeys.one_time == one_time
    assert record.decrypt(bob.local, data, bob.prekeys) == b"first message"


def test_every_bit_flip_and_truncation_of_a_ratchet_envelope_is_refused() -> None:
    alice, bob = established_pair()
    data = alice.send(bob, b"ratchet message")
    record = bob.records["alice-device"]
    before = record.serialize()
    for variant in _variants(data):
        with pytest.raises(SdkError):
            record.decrypt(bob.local, variant)
        assert record.serialize() == before
    assert record.decrypt(bob.local, data) == b"ratchet message"


def test_a_counter_changed_under_an_unchanged_ciphertext_fails_the_tag() -> None:
    alice, bob = established_pair()
    alice.send(bob, b"skipped")
    data = bytearray(alice.send(bob, b"second"))
    data[42] -= 1  # N: 1 -> 0, a key Bob can derive
    record = bob.records["alice-device"]
    before = record.serialize()
    with pytest.raises(CryptoError) as info:
        record.decrypt(bob.local, bytes(data))
    assert info.value.code == "decrypt_failed"
    assert record.serialize() == before
