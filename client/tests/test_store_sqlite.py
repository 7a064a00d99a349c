"""Check the sealed SQLite store: keys, outbox, TOFU, atomic commits."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from avclient_helpers import property_settings
from hypothesis import given
from hypothesis import strategies as st
from nacl.pwhash import argon2id

from agentvault_client.crypto import envelope as env
from agentvault_client.crypto.keys import b64encode
from agentvault_client.errors import (
    BadStorageKeyError,
    IdentityChangedError,
    InsecureKeyFileError,
    NoSessionError,
    SdkError,
    StateCorruptError,
)
from agentvault_client.store import Store, create_key_file, read_key_file

FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}


def _open(path: Path, passphrase: str = "correct horse") -> Store:
    return Store.open(path, passphrase=passphrase, **FAST)


def _device(tmp: Path, name: str) -> Store:
    store = _open(tmp / f"{name}.db")
    store.create_identity()
    store.set_device_id(name)
    return store


def _bundle(store: Store) -> dict:
    upload = store.prekey_upload(3)
    identity = store.get_identity()
    assert identity is not None
    return {
        "device_id": store.device_id,
        "identity_key": b64encode(identity.public_key),
        "signed_prekey": upload["signed_prekey"],
        "one_time_prekey": upload["one_time_prekeys"][0],
    }


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Store, Store]:
    """Return two stores with a session started by the first."""
    alice, bob = _device(tmp_path, "alice"), _device(tmp_path, "bob")
    alice.start_session(_bundle(bob))
    yield alice, bob
    alice.close()
    bob.close()


def test_a_conversation_survives_closing_and_reopening(tmp_path: Path) -> None:
    alice, bob = _device(tmp_path, "alice"), _device(tmp_path, "bob")
    alice.start_session(_bundle(bob))
    assert bob.decrypt("alice", alice.encrypt("bob", b"1", message_ref="m1")) == b"1"
    alice.close()
    bob.close()
    alice, bob = _open(tmp_path / "alice.db"), _open(tmp_path / "bob.db")
    assert alice.decrypt("bob", bob.encrypt("alice", b"2", message_ref="r1")) == b"2"
    assert bob.decrypt("alice", alice.encrypt("bob", b"3", message_ref="m2")) == b"3"


def test_a_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    _device(tmp_path, "alice").close()
    with pytest.raises(BadStorageKeyError) as info:
        _open(tmp_path / "alice.db", passphrase="wrong")
    assert info.value.code == "bad_storage_key"


def test_the_prekey_upload_has_the_server_shape(tmp_path: Path) -> None:
    store = _device(tmp_path, "alice")
    upload = store.prekey_upload(5)
    assert set(upload) == {"signed_prekey", "one_time_prekeys"}
    assert set(upload["signed_prekey"]) == {"id", "public_key", "signature"}
    assert [k["id"] for k in upload["one_time_prekeys"]] == [1, 2, 3, 4, 5]
    more = store.prekey_upload(2)
    assert [k["id"] for k in more["one_time_prekeys"]] == [6, 7]


def test_one_time_prekey_ids_never_repeat_after_use_and_reopen(tmp_path: Path) -> None:
    alice, bob = _device(tmp_path, "alice"), _device(tmp_path, "bob")
    alice.start_session(_bundle(bob))
    bob.decrypt("alice", alice.encrypt("bob", b"x", message_ref="m"))
    bob.close()
    bob = _open(tmp_path / "bob.db")
    ids = [k.prekey_id for k in bob.generate_one_time_prekeys(3)]
    assert ids == [4, 5, 6]


def test_the_one_time_prekey_goes_only_when_the_first_message_authenticates(
    pair: tuple[Store, Store],
) -> None:
    alice, bob = pair
    data = alice.encrypt("bob", b"hello", message_ref="m1")
    opk_id = env.parse(data).prekey.one_time_prekey_id
    tampered = bytearray(data)
    tampered[-5] ^= 0x10
    with pytest.raises(SdkError):
        bob.decrypt("alice", bytes(tampered))
    assert bob.one_time_prekey(opk_id) is not None
    assert not bob.has_session("alice")
    assert bob.pinned_identity("alice") is None

    assert bob.decrypt("alice", data) == b"hello"
    assert bob.one_time_prekey(opk_id) is None
    assert bob.pinned_identity("alice") == alice.get_identity().public_key


def test_a_retried_send_returns_the_same_envelope_bytes(
    pair: tuple[Store, Store],
) -> None:
    alice, bob = pair
    first = alice.encrypt("bob", b"payload", message_ref="msg-1")
    again = alice.encrypt("bob", b"payload", message_ref="msg-1")
    assert again == first
    assert [e.message_ref for e in alice.outbox()] == ["msg-1"]
    alice.mark_sent("bob", "msg-1")
    assert alice.outbox() == []
    assert alice.encrypt("bob", b"payload", message_ref="msg-1") == first
    assert bob.decrypt("alice", first) == b"payload"


def test_a_crash_before_commit_leaves_the_old_state(
    pair: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = pair
    bob.decrypt("alice", alice.encrypt("bob", b"a", message_ref="m0"))
    before = alice._conn.execute("SELECT sealed_record FROM sessions").fetchone()[0]

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Store, "_write_record", crash)
    with pytest.raises(OSError):
        alice.encrypt("bob", b"lost", message_ref="m1")
    monkeypatch.undo()
    after = alice._conn.execute("SELECT sealed_record FROM sessions").fetchone()[0]
    assert after == before
    assert all(entry.message_ref != "m1" for entry in alice.outbox())

    data = alice.encrypt("bob", b"kept", message_ref="m1")
    assert bob.decrypt("alice", data) == b"kept"


def test_a_failed_decrypt_commits_nothing(pair: tuple[Store, Store]) -> None:
    alice, bob = pair
    bob.decrypt("alice", alice.encrypt("bob", b"a", message_ref="m0"))
    data = bytearray(alice.encrypt("bob", b"b", message_ref="m1"))
    rows = list(bob._conn.execute("SELECT * FROM sessions"))
    data[-1] ^= 1
    with pytest.raises(SdkError):
        bob.decrypt("alice", bytes(data))
    assert list(bob._conn.execute("SELECT * FROM sessions")) == rows


def test_skipped_keys_are_rows_and_survive_reopen(tmp_path: Path) -> None:
    alice, bob = _device(tmp_path, "alice"), _device(tmp_path, "bob")
    alice.start_session(_bundle(bob))
    sent = [alice.encrypt("bob", b"%d" % i, message_ref=f"m{i}") for i in range(6)]
    assert bob.decrypt("alice", sent[5]) == b"5"
    assert bob.count_skipped_keys("alice") == 5
    bob.close()
    bob = _open(tmp_path / "bob.db")
    assert bob.decrypt("alice", sent[2]) == b"2"
    assert bob.count_skipped_keys("alice") == 4
    bob.close()
    bob = _open(tmp_path / "bob.db")
    with pytest.raises(SdkError) as info:
        bob.decrypt("alice", sent[2])
    assert info.value.code in ("duplicate_message", "decrypt_failed")


def test_a_changed_identity_blocks_sending_until_accepted(tmp_path: Path) -> None:
    alice, bob = _device(tmp_path, "alice"), _device(tmp_path, "bob")
    alice.start_session(_bundle(bob))
    bob.decrypt("alice", alice.encrypt("bob", b"hi", message_ref="m0"))

    reinstalled = _open(tmp_path / "bob2.db")
    reinstalled.create_identity()
    reinstalled.set_device_id("bob")
    with pytest.raises(IdentityChangedError):
        alice.start_session(_bundle(reinstalled))
    with pytest.raises(IdentityChangedError) as info:
        alice.encrypt("bob", b"secret", message_ref="m1")
    assert info.value.code == "identity_changed"
    assert alice.pending_identity("bob") == reinstalled.get_identity().public_key

    alice.accept_identity("bob")
    with pytest.raises(NoSessionError):
        alice.encrypt("bob", b"secret", message_ref="m1")
    alice.start_session(_bundle(reinstalled))
    data = alice.encrypt("bob", b"secret", message_ref="m1")
    assert reinstalled.decrypt("alice", data) == b"secret"


def test_a_prekey_message_with_a_changed_identity_is_refused(tmp_path: Path) -> None:
    alice, bob = _device(tmp_path, "alice"), _device(tmp_path, "bob")
    alice.start_session(_bundle(bob))
    bob.decrypt("alice", alice.encrypt("bob", b"hi", message_ref="m0"))
    other = _open(tmp_path / "alice2.db")
    other.create_identity()
    other.set_device_id("alice")
    other.start_session(_bundle(bob))
    with pytest.raises(IdentityChangedError):
        bob.decrypt("alice", other.encrypt("bob", b"me", message_ref="x"))
    assert bob.pending_identity("alice") == other.get_identity().public_key


def test_a_key_file_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "storage.key"
    key = create_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    store = Store.open(tmp_path / "k.db", key_file=path)
    store.close()
    for mode in (0o640, 0o604, 0o660, 0o644):
        os.chmod(path, mode)
        with pytest.raises(InsecureKeyFileError) as info:
            Store.open(tmp_path / "k.db", key_file=path)
        assert info.value.code == "insecure_key_file"
    os.chmod(path, 0o400)
    Store.open(tmp_path / "k.db", key_file=path).close()


def test_secrets_are_sealed_at_rest(pair: tuple[Store, Store], tmp_path: Path) -> None:
    alice, bob = pair
    bob.decrypt("alice", alice.encrypt("bob", b"plaintext-marker", message_ref="m"))
    identity = alice.get_identity()
    raw = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("alice.db")
    )
    assert identity.seed not in raw
    assert identity.x25519_private not in raw
    state = alice.load_session("bob").states[0]
    assert state.rk not in raw and state.dhs_private not in raw


def test_a_swapped_sealed_row_fails_to_open(tmp_path: Path) -> None:
    store = _device(tmp_path, "alice")
    store.generate_one_time_prekeys(2)
    conn = store._conn
    sealed_2 = conn.execute(
        "SELECT sealed_private FROM one_time_prekeys WHERE prekey_id = 2"
    ).fetchone()[0]
    conn.execute(
        "UPDATE one_time_prekeys SET sealed_private = ? WHERE prekey_id = 1",
        (sealed_2,),
    )
    with pytest.raises(StateCorruptError):
        store.one_time_prekey(1)


def test_the_store_opens_only_with_exactly_one_key_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Store.open(tmp_path / "x.db")
    with pytest.raises(ValueError):
        Store.open(tmp_path / "x.db", passphrase="a", storage_key=bytes(32))
    assert isinstance(sqlite3.sqlite_version, str)


@property_settings(max_examples=15)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "reopen-a", "reopen-b"]), st.integers(1, 3)
        ),
        max_size=12,
    )
)
def test_reopening_at_any_step_continues_the_conversation(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    tmp = tmp_path_factory.mktemp("conv")
    alice, bob = _device(tmp, "alice"), _device(tmp, "bob")
    alice.start_session(_bundle(bob))
    bob.decrypt("alice", alice.encrypt("bob", b"start", message_ref="s"))
    counter = 0
    for kind, count in steps:
        if kind == "reopen-a":
            alice.close()
            alice = _open(tmp / "alice.db")
        elif kind == "reopen-b":
            bob.close()
            bob = _open(tmp / "bob.db")
        else:
            sender, recipient, peer, me = (
                (alice, bob, "bob", "alice")
                if kind == "a"
                else (bob, alice, "alice", "bob")
            )
            for _ in range(count):
                counter += 1
                text = b"m%d" % counter
                data = sender.encrypt(peer, text, message_ref=f"r{counter}")
                assert recipient.decrypt(me, data) == text
    alice.close()
    bob.close()


def test_the_store_and_its_wal_files_are_private_to_the_user(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store.open(tmp_path / "s.db", storage_key=os.urandom(32))
        store.create_identity()
        files = sorted(tmp_path.glob("s.db*"))
        modes = {p.name: os.stat(p).st_mode & 0o777 for p in files}
        store.close()
    finally:
        os.umask(old)

    assert "s.db-wal" in modes
    assert set(modes.values()) == {0o600}, modes
