"""Check X3DH, the Double Ratchet and session records against their rules."""

from __future__ import annotations

import time

import pytest
from avclient_helpers import Device, established_pair

from agentvault_client.crypto import (
    IdentityKeyPair,
    LocalDevice,
    PrekeyBundle,
    SessionRecord,
    SignedPrekey,
    ratchet,
)
from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto.keys import signed_prekey_message
from agentvault_client.errors import (
    BadSignatureError,
    CannotSendError,
    CryptoError,
    DecryptFailedError,
    DuplicateMessageError,
    IdentityChangedError,
    InvalidKeyError,
    LowOrderKeyError,
    ProtocolError,
    TooManySkippedError,
    UnknownPrekeyError,
)

# A point of order 8 on Curve25519: X25519 with it gives all zeros.
LOW_ORDER_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)


def _forge_ratchet(record_bytes: bytes, key: bytes, pn: int, n: int) -> bytes:
    """Return a syntactically valid ratchet envelope with a chosen header."""
    del record_bytes
    prefix = env.ratchet_prefix(key, pn, n)
    return prefix + bytes(24) + bytes(env.PAD_BLOCK + 16)


def test_it_runs_a_conversation_both_ways() -> None:
    alice, bob = established_pair()
    for i in range(5):
        assert bob.receive(alice, alice.send(bob, b"a%d" % i)) == b"a%d" % i
        assert alice.receive(bob, bob.send(alice, b"b%d" % i)) == b"b%d" % i


def test_the_first_messages_carry_the_x3dh_fields_until_a_reply_arrives() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    alice.start(bob)
    first = env.parse(alice.send(bob, b"1"))
    second = env.parse(alice.send(bob, b"2"))
    assert first.type == second.type == env.TYPE_PREKEY
    assert first.prekey == second.prekey
    bob.receive(alice, env_bytes(first))
    bob.receive(alice, env_bytes(second))
    alice.receive(bob, bob.send(alice, b"reply"))
    assert env.parse(alice.send(bob, b"3")).type == env.TYPE_RATCHET


def env_bytes(message: env.Envelope) -> bytes:
    """Rebuild envelope bytes from a parsed envelope."""
    return message.prefix + message.nonce + message.ciphertext


def test_a_responder_cannot_send_before_it_has_a_session() -> None:
    bob = Device.create("b")
    record = SessionRecord("a", IdentityKeyPair.generate().public_key)
    with pytest.raises(ProtocolError) as info:
        record.encrypt(bob.local, b"x")
    assert info.value.code == "no_session"


def test_an_initiator_state_without_sending_chain_refuses_to_send() -> None:
    state = ratchet.init_responder(
        bytes(32), *prim.x25519_generate(), base_key=bytes(32)
    )
    with pytest.raises(CannotSendError):
        ratchet.prepare_send(state, b"x", b"")


def test_the_one_time_prekey_is_deleted_only_after_the_message_authenticated() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    alice.start(bob)
    data = alice.send(bob, b"hello")
    opk_id = env.parse(data).prekey.one_time_prekey_id
    assert opk_id in bob.prekeys.one_time

    tampered = bytearray(data)
    tampered[-1] ^= 1
    record = SessionRecord.for_incoming("a", data)
    with pytest.raises(DecryptFailedError):
        record.prepare_decrypt(bob.local, bytes(tampered), bob.prekeys)
    assert record.states == []

    plaintext, plan = record.prepare_decrypt(bob.local, data, bob.prekeys)
    assert plaintext == b"hello"
    assert plan.consumed_one_time_prekey == opk_id


def test_a_replayed_prekey_message_reuses_the_session_and_consumes_nothing() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    alice.start(bob)
    data = alice.send(bob, b"hello")
    bob.receive(alice, data)
    bob.prekeys.one_time.clear()
    record = bob.records["a"]
    before = record.serialize()
    with pytest.raises(DuplicateMessageError):
        bob.receive(alice, data)
    assert record.serialize() == before
    assert len(record.states) == 1


def test_an_unknown_prekey_id_is_refused() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    alice.start(bob)
    data = alice.send(bob, b"hello")
    bob.prekeys.one_time.clear()
    with pytest.raises(UnknownPrekeyError):
        bob.receive(alice, data)


def test_a_bundle_signed_by_another_key_is_refused_before_any_dh() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    good = bob.bundle()
    mallory = IdentityKeyPair.generate()
    forged = PrekeyBundle(
        good.device_id,
        good.identity_key,
        good.signed_prekey_id,
        good.signed_prekey,
        mallory.sign(signed_prekey_message(good.signed_prekey_id, good.signed_prekey)),
        good.one_time_prekey_id,
        good.one_time_prekey,
    )
    with pytest.raises(BadSignatureError) as info:
        SessionRecord.from_bundle(alice.local, forged)
    assert info.value.code == "bad_signature"


def test_a_signature_over_another_prekey_id_is_refused() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    good = bob.bundle()
    relabelled = PrekeyBundle(
        good.device_id,
        good.identity_key,
        good.signed_prekey_id + 1,
        good.signed_prekey,
        good.signed_prekey_signature,
    )
    with pytest.raises(BadSignatureError):
        SessionRecord.from_bundle(alice.local, relabelled)


def test_a_claimed_identity_without_its_private_key_is_refused() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    mallory = LocalDevice(IdentityKeyPair.generate(), "a")
    record = SessionRecord.from_bundle(mallory, bob.bundle())
    data = bytearray(record.encrypt(mallory, b"I am Alice"))
    # Swap in Alice's public identity key; Mallory lacks its private key.
    data[3:35] = alice.local.identity.public_key
    opks = dict(bob.prekeys.one_time)
    incoming = SessionRecord.for_incoming("a", bytes(data))
    with pytest.raises(DecryptFailedError):
        incoming.decrypt(bob.local, bytes(data), bob.prekeys)
    assert incoming.states == []
    assert bob.prekeys.one_time == opks


def test_a_message_from_another_session_is_refused() -> None:
    alice, bob = established_pair()
    carol = Device.create("carol")
    carol.start(bob)
    bob.receive(carol, carol.send(bob, b"hi"))
    from_carol = bob.send(carol, b"for carol")
    record = alice.records[bob.device_id]
    before = record.serialize()
    with pytest.raises(CryptoError):
        record.decrypt(alice.local, from_carol)
    assert record.serialize() == before


def test_a_different_identity_for_a_known_device_is_refused() -> None:
    alice, _bob = established_pair()
    impostor = Device.create("bob-device")
    with pytest.raises(IdentityChangedError) as info:
        alice.records["bob-device"].initiate(alice.local, impostor.bundle())
    assert info.value.code == "identity_changed"


def test_a_low_order_ratchet_key_is_refused_with_our_error() -> None:
    _alice, bob = established_pair()
    record = bob.records["alice-device"]
    before = record.serialize()
    forged = _forge_ratchet(b"", LOW_ORDER_POINT, 0, 0)
    with pytest.raises(LowOrderKeyError) as info:
        record.decrypt(bob.local, forged)
    assert info.value.code == "low_order_key"
    assert record.serialize() == before


def test_a_low_order_signed_prekey_in_a_bundle_is_refused_with_our_error() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    spk = SignedPrekey(
        5,
        bytes(32),
        LOW_ORDER_POINT,
        bob.local.identity.sign(signed_prekey_message(5, LOW_ORDER_POINT)),
    )
    bundle = PrekeyBundle(
        "b", bob.local.identity.public_key, 5, spk.public_key, spk.signature
    )
    with pytest.raises(LowOrderKeyError):
        SessionRecord.from_bundle(alice.local, bundle)


def test_an_invalid_identity_key_in_a_bundle_is_refused_with_our_error() -> None:
    alice = Device.create("a")
    bundle = PrekeyBundle("b", bytes(32), 1, bytes(32), bytes(64))
    with pytest.raises((BadSignatureError, InvalidKeyError)):
        SessionRecord.from_bundle(alice.local, bundle)


def test_a_huge_counter_is_refused_quickly_and_changes_nothing() -> None:
    _alice, bob = established_pair()
    record = bob.records["alice-device"]
    state = record.states[0]
    before = record.serialize()
    for n in (state.nr + ratchet.MAX_SKIP + 1, 2**32 - 1):
        forged = _forge_ratchet(b"", state.dhr, 0, n)
        started = time.perf_counter()
        with pytest.raises(TooManySkippedError) as info:
            record.decrypt(bob.local, forged)
        assert time.perf_counter() - started < 0.05
        assert info.value.code == "too_many_skipped"
        assert record.serialize() == before
    new_key = prim.x25519_generate()[1]
    with pytest.raises(TooManySkippedError):
        record.decrypt(bob.local, _forge_ratchet(b"", new_key, 0, 2**32 - 1))
    with pytest.raises(TooManySkippedError):
        record.decrypt(bob.local, _forge_ratchet(b"", new_key, 2**32 - 1, 0))
    assert record.serialize() == before


def test_a_skip_of_exactly_max_skip_is_accepted() -> None:
    alice, bob = established_pair()
    sent = [alice.send(bob, b"%d" % i) for i in range(ratchet.MAX_SKIP + 1)]
    assert bob.receive(alice, sent[-1]) == b"%d" % ratchet.MAX_SKIP
    assert len(bob.records["alice-device"].skipped) == ratchet.MAX_SKIP
    assert bob.receive(alice, sent[0]) == b"0"


def test_the_skipped_store_evicts_the_oldest_keys_beyond_its_cap() -> None:
    alice, bob = established_pair()
    record = bob.records["alice-device"]
    epochs = []
    for _epoch in range(3):
        sent = [alice.send(bob, b"%d" % i) for i in range(1000)]
        bob.receive(alice, sent[-1])
        alice.receive(bob, bob.send(alice, b"turn"))
        epochs.append(sent)
        assert len(record.skipped) <= ratchet.MAX_SKIPPED_KEYS
    assert len(record.skipped) == ratchet.MAX_SKIPPED_KEYS
    with pytest.raises((DuplicateMessageError, DecryptFailedError)):
        bob.receive(alice, epochs[0][0])
    assert bob.receive(alice, epochs[2][0]) == b"0"
    assert bob.receive(alice, epochs[1][998]) == b"998"


def test_a_replayed_message_is_refused_and_changes_nothing() -> None:
    alice, bob = established_pair()
    data = alice.send(bob, b"once")
    later = alice.send(bob, b"later")
    bob.receive(alice, later)
    assert bob.receive(alice, data) == b"once"
    record = bob.records["alice-device"]
    before = record.serialize()
    for replay in (data, later):
        with pytest.raises(DuplicateMessageError) as info:
            bob.receive(alice, replay)
        assert info.value.code == "duplicate_message"
        assert record.serialize() == before


def test_a_message_of_a_finished_chain_replayed_later_is_a_duplicate() -> None:
    alice, bob = established_pair()
    old = alice.send(bob, b"old chain")
    bob.receive(alice, old)
    for _ in range(2):
        alice.receive(bob, bob.send(alice, b"x"))
        bob.receive(alice, alice.send(bob, b"y"))
    with pytest.raises(DuplicateMessageError):
        bob.receive(alice, old)


def test_simultaneous_initiation_converges_on_one_session() -> None:
    alice, bob = Device.create("a"), Device.create("b")
    alice.start(bob)
    bob.start(alice)
    from_alice = alice.send(bob, b"from alice")
    from_bob = bob.send(alice, b"from bob")
    assert bob.receive(alice, from_alice) == b"from alice"
    assert alice.receive(bob, from_bob) == b"from bob"
    for i in range(4):
        assert bob.receive(alice, alice.send(bob, b"a%d" % i)) == b"a%d" % i
        assert alice.receive(bob, bob.send(alice, b"b%d" % i)) == b"b%d" % i
    a_state = alice.records["b"].states[0]
    b_state = bob.records["a"].states[0]
    assert a_state.base_key == b_state.base_key


def test_a_new_session_keeps_the_old_one_for_messages_in_flight() -> None:
    alice, bob = established_pair()
    in_flight = alice.send(bob, b"old session")
    alice.start(bob)
    fresh = alice.send(bob, b"new session")
    assert bob.receive(alice, fresh) == b"new session"
    assert bob.receive(alice, in_flight) == b"old session"
    assert len(bob.records["alice-device"].states) == 2


def test_a_record_keeps_at_most_eleven_states() -> None:
    alice, bob = established_pair()
    for _ in range(15):
        alice.start(bob, with_one_time=False)
        bob.receive(alice, alice.send(bob, b"x"))
    assert len(bob.records["alice-device"].states) == 11
    assert len(alice.records["bob-device"].states) == 11


def test_nonces_differ_after_a_state_rollback() -> None:
    alice, bob = established_pair()
    snapshot = alice.snapshot(bob)
    first = env.parse(alice.send(bob, b"m"))
    alice.records["bob-device"] = SessionRecord.deserialize(snapshot)
    second = env.parse(alice.send(bob, b"m2"))
    assert (first.ratchet_key, first.n) == (second.ratchet_key, second.n)
    assert first.nonce != second.nonce


def test_a_record_survives_serialization_byte_for_byte() -> None:
    alice, bob = established_pair()
    sent = [alice.send(bob, b"%d" % i) for i in range(5)]
    bob.receive(alice, sent[4])
    record = bob.records["alice-device"]
    blob = record.serialize()
    clone = SessionRecord.deserialize(blob)
    assert clone.serialize() == blob
    assert clone.decrypt(bob.local, sent[1]) == b"1"
    lean = record.serialize(include_skipped=False)
    assert len(lean) < len(blob)


def test_a_corrupt_or_unknown_version_record_fails_cleanly() -> None:
    alice, bob = established_pair()
    blob = bob.snapshot(alice)
    from agentvault_client.errors import StateCorruptError, UnsupportedVersionError

    with pytest.raises(UnsupportedVersionError):
        SessionRecord.deserialize(b"\x09" + blob[1:])
    with pytest.raises(StateCorruptError):
        SessionRecord.deserialize(blob[:-3])
    with pytest.raises(StateCorruptError):
        SessionRecord.deserialize(blob + b"\x00")
