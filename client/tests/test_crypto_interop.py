"""Check that our Double Ratchet interoperates with Syndace's ``doubleratchet``."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from avclient_helpers import property_settings
from hypothesis import given
from hypothesis import strategies as st

from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto import ratchet
from agentvault_client.crypto.session import session_ad

pytest.importorskip("doubleratchet")

from avclient_syndace import CONFIG, SyndaceRatchet, from_syndace, to_syndace

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asyncio.run(coro)


class Ours:
    """Our side of a two-party ratchet, driven directly at the ratchet layer."""

    def __init__(
        self, state: ratchet.RatchetState, send_ad: bytes, recv_ad: bytes
    ) -> None:
        self.state = state
        self.skipped = ratchet.SkippedKeys()
        self.send_ad, self.recv_ad = send_ad, recv_ad

    def encrypt(self, plaintext: bytes) -> bytes:
        data, plan = ratchet.prepare_send(self.state, plaintext, self.send_ad)
        plan.apply(self.state)
        return data

    def decrypt(self, data: bytes) -> bytes:
        plaintext, plan = ratchet.prepare_receive(
            self.state, self.skipped, env.parse(data), self.recv_ad
        )
        plan.apply(self.state, self.skipped, 0)
        return plaintext


AD_AB = session_ad(bytes(range(32)), bytes(range(32, 64)), "alice", "bob")
AD_BA = session_ad(bytes(range(32, 64)), bytes(range(32)), "bob", "alice")


def _with_ours_initiating() -> tuple[Ours, SyndaceRatchet, bytes]:
    secret = prim.random_bytes(32)
    bob_private, bob_public = prim.x25519_generate()
    ours = Ours(
        ratchet.init_initiator(secret, bob_public, base_key=bytes(32), pending=None),
        AD_AB,
        AD_BA,
    )
    first = ours.encrypt(b"first from ours")
    theirs, padded = _run(
        SyndaceRatchet.decrypt_initial_message(
            **CONFIG,
            shared_secret=secret,
            own_ratchet_priv=bob_private,
            message=to_syndace(first),
            associated_data=AD_AB,
        )
    )
    return ours, theirs, env.unpad(padded)


def _with_theirs_initiating() -> tuple[SyndaceRatchet, Ours, bytes]:
    secret = prim.random_bytes(32)
    bob_private, bob_public = prim.x25519_generate()
    theirs, first = _run(
        SyndaceRatchet.encrypt_initial_message(
            **CONFIG,
            shared_secret=secret,
            recipient_ratchet_pub=bob_public,
            message=env.pad(b"first from theirs"),
            associated_data=AD_AB,
        )
    )
    ours = Ours(
        ratchet.init_responder(secret, bob_private, bob_public, base_key=bytes(32)),
        AD_BA,
        AD_AB,
    )
    return theirs, ours, ours.decrypt(from_syndace(first))


def test_our_first_message_decrypts_in_the_other_implementation() -> None:
    _ours, _theirs, plaintext = _with_ours_initiating()
    assert plaintext == b"first from ours"


def test_their_first_message_decrypts_here() -> None:
    _theirs, _ours, plaintext = _with_theirs_initiating()
    assert plaintext == b"first from theirs"


def test_a_tampered_message_fails_in_both_implementations() -> None:
    ours, theirs, _ = _with_ours_initiating()
    data = bytearray(ours.encrypt(b"x"))
    data[-1] ^= 1
    from doubleratchet import AuthenticationFailedException

    with pytest.raises(AuthenticationFailedException):
        _run(theirs.decrypt_message(to_syndace(bytes(data)), AD_AB))


# A script step: (ours sends?, how many, delivery order seed).
script_step = st.tuples(st.booleans(), st.integers(1, 6), st.integers(0, 1000))


@property_settings(max_examples=30)
@given(script=st.lists(script_step, min_size=1, max_size=12), ours_first=st.booleans())
def test_random_conversations_interoperate_both_ways(
    script: list[tuple[bool, int, int]], ours_first: bool
) -> None:
    if ours_first:
        ours, theirs, _ = _with_ours_initiating()
        ours_ad, theirs_ad = AD_AB, AD_BA
    else:
        theirs, ours, _ = _with_theirs_initiating()
        ours_ad, theirs_ad = AD_BA, AD_AB

    async def conversation() -> None:
        counter = 0
        for ours_sends, count, seed in script:
            batch = []
            for _ in range(count):
                counter += 1
                text = b"message %d" % counter
                if ours_sends:
                    batch.append((text, ours.encrypt(text)))
                else:
                    sent = await theirs.encrypt_message(env.pad(text), theirs_ad)
                    batch.append((text, from_syndace(sent)))
            # Deliver the batch in a seeded order (reordering within a batch).
            order = sorted(range(len(batch)), key=lambda i: (i * 7 + seed) % 11)
            for i in order:
                text, data = batch[i]
                if ours_sends:
                    padded = await theirs.decrypt_message(to_syndace(data), ours_ad)
                    assert env.unpad(padded) == text
                else:
                    assert ours.decrypt(data) == text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asyncio.run(conversation())
