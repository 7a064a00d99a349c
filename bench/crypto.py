"""Benchmark the client crypto core against its floor and a peer implementation.

Run: ``python bench/crypto.py`` (about 30-60 seconds on 2 cores).

Every figure is printed beside, from the same run, the raw XChaCha20-Poly1305
encrypt+decrypt rate of 1 KiB (the floor) and Syndace's ``doubleratchet``
configured with the same parameters (the peer). A "message" is one encrypt
plus one decrypt of 1 KiB. Each measurement runs several short rounds,
interleaved with its baselines, and reports the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "client" / "tests"))

import nacl.bindings as sodium
from agentvault_client.crypto import (
    IdentityKeyPair,
    LocalDevice,
    OneTimePrekey,
    PrekeyBundle,
    SessionRecord,
    SignedPrekey,
    x3dh,
)
from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto.keys import b64encode
from agentvault_client.store import Store
from nacl.pwhash import argon2id

PAYLOAD = os.urandom(1024)
BURST = 100


def _one_rate(run: Callable[[], int], min_time: float) -> float:
    count, started = 0, time.perf_counter()
    while True:
        count += run()
        elapsed = time.perf_counter() - started
        if elapsed >= min_time:
            return count / elapsed


def median_rates(
    runs: list[Callable[[], int]], rounds: int, *, min_time: float
) -> list[float]:
    """Return each function's median rate; rounds interleave the functions.

    Interleaving puts a measurement and its baselines under the same load,
    which matters on a shared machine.
    """
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            rates[i].append(_one_rate(run, min_time))
    return [statistics.median(r) for r in rates]


# -- floor ------------------------------------------------------------------


def raw_aead_round() -> int:
    """Encrypt and decrypt 1 KiB 200 times with the raw PyNaCl binding."""
    key, nonce = os.urandom(32), os.urandom(24)
    enc = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    dec = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
    for _ in range(200):
        dec(enc(PAYLOAD, b"", nonce, key), b"", nonce, key)
    return 200


def raw_x25519_round() -> int:
    """Run 100 raw X25519 agreements."""
    private, _ = prim.x25519_generate()
    _, public = prim.x25519_generate()
    for _ in range(100):
        sodium.crypto_scalarmult(private, public)
    return 100


# -- ours -------------------------------------------------------------------


class Pool:
    """Hold one device's prekeys for the benchmark."""

    def __init__(self) -> None:
        self.signed: dict[int, SignedPrekey] = {}
        self.one_time: dict[int, OneTimePrekey] = {}

    def signed_prekey(self, prekey_id: int) -> SignedPrekey | None:
        return self.signed.get(prekey_id)

    def one_time_prekey(self, prekey_id: int) -> OneTimePrekey | None:
        return self.one_time.get(prekey_id)


def our_pair() -> tuple[LocalDevice, SessionRecord, LocalDevice, SessionRecord]:
    """Return two devices with an established session."""
    alice = LocalDevice(IdentityKeyPair.generate(), "alice")
    bob = LocalDevice(IdentityKeyPair.generate(), "bob")
    pool = Pool()
    spk = SignedPrekey.generate(bob.identity, 1)
    pool.signed[1] = spk
    bundle = PrekeyBundle(
        "bob", bob.identity.public_key, 1, spk.public_key, spk.signature
    )
    to_bob = SessionRecord.from_bundle(alice, bundle)
    first = to_bob.encrypt(alice, b"hello")
    to_alice = SessionRecord.for_incoming("alice", first)
    to_alice.decrypt(bob, first, pool)
    to_bob.decrypt(alice, to_alice.encrypt(bob, b"hi"))
    return alice, to_bob, bob, to_alice


def our_burst_round(pair: tuple) -> int:
    """Send a burst of 100 one way, then one reply."""
    alice, to_bob, bob, to_alice = pair
    for _ in range(BURST):
        to_alice.decrypt(bob, to_bob.encrypt(alice, PAYLOAD))
    to_bob.decrypt(alice, to_alice.encrypt(bob, PAYLOAD))
    return BURST + 1


def our_alternating_round(pair: tuple) -> int:
    """Alternate senders 50 times each (a DH step on every message)."""
    alice, to_bob, bob, to_alice = pair
    for _ in range(50):
        to_alice.decrypt(bob, to_bob.encrypt(alice, PAYLOAD))
        to_bob.decrypt(alice, to_alice.encrypt(bob, PAYLOAD))
    return 100


def x3dh_setup() -> tuple:
    """Return identities, a signed prekey and 20 one-time prekeys with bundles."""
    alice = IdentityKeyPair.generate()
    bob = IdentityKeyPair.generate()
    spk = SignedPrekey.generate(bob, 1)
    prekeys = []
    for i in range(20):
        opk = OneTimePrekey.generate(i + 1)
        bundle = PrekeyBundle(
            "bob",
            bob.public_key,
            1,
            spk.public_key,
            spk.signature,
            i + 1,
            opk.public_key,
        )
        prekeys.append((opk, bundle))
    return alice, bob, spk, prekeys


def our_x3dh_round(setup: tuple) -> int:
    """Run 20 X3DH agreements, both sides, each with a one-time prekey.

    The initiator verifies the signed prekey's signature every time.
    """
    alice, bob, spk, prekeys = setup
    for opk, bundle in prekeys:
        result = x3dh.initiate(alice, bundle)
        secret = x3dh.respond(bob, spk, opk, result.fields)
        assert secret == result.shared_secret
    return 20


def our_store_pair(tmp: Path) -> tuple[Store, Store, list[int]]:
    """Return two stores with an established session."""
    fast = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
    alice = Store.open(tmp / "alice.db", passphrase="bench", **fast)
    bob = Store.open(tmp / "bob.db", passphrase="bench", **fast)
    for store, name in ((alice, "alice"), (bob, "bob")):
        store.create_identity()
        store.set_device_id(name)
    upload = bob.prekey_upload(1)
    alice.start_session(
        {
            "device_id": "bob",
            "identity_key": b64encode(bob.get_identity().public_key),
            "signed_prekey": upload["signed_prekey"],
            "one_time_prekey": upload["one_time_prekeys"][0],
        }
    )
    bob.decrypt("alice", alice.encrypt("bob", b"hello", message_ref="m0"))
    alice.decrypt("bob", bob.encrypt("alice", b"hi", message_ref="r0"))
    return alice, bob, [0]


def our_store_round(state: tuple[Store, Store, list[int]]) -> int:
    """Send 50 messages one way, each committed on both sides."""
    alice, bob, counter = state
    for _ in range(50):
        counter[0] += 1
        data = alice.encrypt("bob", PAYLOAD, message_ref=f"m{counter[0]}")
        bob.decrypt("alice", data)
    return 50


# -- peer: Syndace doubleratchet ---------------------------------------------


def syndace_pair(loop: asyncio.AbstractEventLoop) -> tuple:
    """Return two Syndace ratchets with an established session."""
    from avclient_syndace import CONFIG, SyndaceRatchet

    secret = os.urandom(32)
    bob_private, bob_public = prim.x25519_generate()
    alice, first = loop.run_until_complete(
        SyndaceRatchet.encrypt_initial_message(
            **CONFIG,
            shared_secret=secret,
            recipient_ratchet_pub=bob_public,
            message=b"hello",
            associated_data=b"ad",
        )
    )
    bob, _ = loop.run_until_complete(
        SyndaceRatchet.decrypt_initial_message(
            **CONFIG,
            shared_secret=secret,
            own_ratchet_priv=bob_private,
            message=first,
            associated_data=b"ad",
        )
    )
    return alice, bob


def syndace_round(
    loop: asyncio.AbstractEventLoop, pair: tuple, alternating: bool
) -> int:
    """Run the burst or alternating pattern on Syndace's ratchet."""
    alice, bob = pair
    padded = env.pad(PAYLOAD)

    async def burst() -> int:
        for _ in range(BURST):
            await bob.decrypt_message(await alice.encrypt_message(padded, b"ad"), b"ad")
        await alice.decrypt_message(await bob.encrypt_message(padded, b"ad"), b"ad")
        return BURST + 1

    async def alternate() -> int:
        for _ in range(50):
            await bob.decrypt_message(await alice.encrypt_message(padded, b"ad"), b"ad")
            await alice.decrypt_message(await bob.encrypt_message(padded, b"ad"), b"ad")
        return 100

    return loop.run_until_complete(alternate() if alternating else burst())


def syndace_store_round(
    loop: asyncio.AbstractEventLoop, pair: tuple, dbs: tuple[sqlite3.Connection, ...]
) -> int:
    """Send 50 messages one way, saving each side's JSON state per message."""
    alice, bob = pair
    padded = env.pad(PAYLOAD)

    def save(conn: sqlite3.Connection, ratchet: object) -> None:
        blob = json.dumps(ratchet.json).encode()  # type: ignore[attr-defined]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO state VALUES (1, ?)", (blob,))
        conn.execute("COMMIT")

    async def run() -> int:
        for _ in range(50):
            message = await alice.encrypt_message(padded, b"ad")
            save(dbs[0], alice)
            await bob.decrypt_message(message, b"ad")
            save(dbs[1], bob)
        return 50

    return loop.run_until_complete(run())


def syndace_db(path: Path) -> sqlite3.Connection:
    """Open a SQLite file with the same settings as our store."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY, blob BLOB)")
    return conn


# -- report -----------------------------------------------------------------


def main() -> None:
    """Run every measurement and print the table with the goals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    rounds, min_time = args.rounds, args.min_time
    warnings.simplefilter("ignore")
    loop = asyncio.new_event_loop()

    def rates(*fns: Callable[[], int]) -> list[float]:
        return median_rates(list(fns), rounds, min_time=min_time)

    pair = our_pair()
    peer = syndace_pair(loop)
    rows = []

    burst, floor, peer_burst = rates(
        lambda: our_burst_round(pair),
        raw_aead_round,
        lambda: syndace_round(loop, peer, False),
    )
    rows.append(("one-way bursts of 100 (msg/s)", burst, floor, peer_burst))

    alternating, floor_alt, peer_alternating = rates(
        lambda: our_alternating_round(pair),
        raw_aead_round,
        lambda: syndace_round(loop, peer, True),
    )
    rows.append(
        ("alternating senders (msg/s)", alternating, floor_alt, peer_alternating)
    )

    setup = x3dh_setup()
    handshakes, x25519 = rates(lambda: our_x3dh_round(setup), raw_x25519_round)
    rows.append(("X3DH, both sides (handshakes/s)", handshakes, x25519, None))

    with tempfile.TemporaryDirectory() as tmp:
        stores = our_store_pair(Path(tmp))
        dbs = (syndace_db(Path(tmp) / "peer-a.db"), syndace_db(Path(tmp) / "peer-b.db"))
        peer2 = syndace_pair(loop)
        stored, floor_store, peer_stored = rates(
            lambda: our_store_round(stores),
            raw_aead_round,
            lambda: syndace_store_round(loop, peer2, dbs),
        )
        for conn in dbs:
            conn.close()
        stores[0].close()
        stores[1].close()
    rows.append(
        ("one-way, SQLite commit per message (msg/s)", stored, floor_store, peer_stored)
    )
    loop.close()

    print(f"{'measurement':<44}{'ours':>10}{'floor':>10}{'peer':>10}")
    for name, ours, base, other in rows:
        other_text = "n/a" if other is None else f"{other:,.0f}"
        print(f"{name:<44}{ours:>10,.0f}{base:>10,.0f}{other_text:>10}")
    print()
    print("floor: raw XChaCha20-Poly1305 encrypt+decrypt of 1 KiB (PyNaCl binding);")
    print("       for X3DH, raw X25519 agreements/s. peer: Syndace doubleratchet")
    print("       1.3.0 with the same KDFs and AEAD (no X3DH in that package).")
    print()
    goals = [
        ("one-way bursts >= 0.35 x floor", burst / floor, 0.35),
        ("alternating >= 2 x peer", alternating / peer_alternating, 2.0),
        ("X3DH >= 1,000 handshakes/s", handshakes / 1000, 1.0),
        ("SQLite commit per message >= 1,000 msg/s", stored / 1000, 1.0),
    ]
    for name, ratio, needed in goals:
        verdict = "met" if ratio >= needed else "MISSED"
        print(f"goal {name:<42} ratio {ratio:5.2f} (needs {needed:.2f}): {verdict}")


if __name__ == "__main__":
    main()
