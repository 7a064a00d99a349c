"""Implement the Double Ratchet over X25519, HKDF, HMAC and XChaCha20-Poly1305.

The algorithm follows Signal's specification (revision 1). Both directions
are two-phase: ``prepare_*`` computes everything without touching the state
and returns a plan; ``plan.apply`` commits. A receive plan exists only after
the AEAD tag verified, so a rejected message never changes the state.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import primitives as prim
from agentvault_client.errors import (
    CannotSendError,
    DecryptFailedError,
    DuplicateMessageError,
    StateCorruptError,
    TooManySkippedError,
    UnsupportedVersionError,
)

__all__ = [
    "CHAIN_MESSAGE_KEY",
    "CHAIN_NEXT_KEY",
    "MAX_OLD_RECEIVE_KEYS",
    "MAX_SKIP",
    "MAX_SKIPPED_KEYS",
    "RATCHET_INFO",
    "RatchetState",
    "ReceivePlan",
    "SendPlan",
    "SkippedKeys",
    "init_initiator",
    "init_responder",
    "kdf_ck",
    "kdf_rk",
    "prepare_receive",
    "prepare_send",
]

#: HKDF info of the root KDF.
RATCHET_INFO = b"AgentVault_Ratchet_v1"
#: HMAC input that derives a message key from a chain key.
CHAIN_MESSAGE_KEY = b"\x01"
#: HMAC input that derives the next chain key.
CHAIN_NEXT_KEY = b"\x02"
#: Most message keys one header may make the receiver skip in one chain.
MAX_SKIP = 1000
#: Most skipped message keys kept per session; the oldest go first.
MAX_SKIPPED_KEYS = 2000
#: Old receiving ratchet keys remembered to spot replays of finished chains.
MAX_OLD_RECEIVE_KEYS = 5

_STATE_VERSION = 1
_hmac = prim.hmac_sha256
_hmac_pair = prim.hmac_sha256_pair
_aead_encrypt = prim.aead_encrypt
_aead_decrypt = prim.aead_decrypt
_random = prim.random_bytes
_ratchet_prefix = env.ratchet_prefix
_pad = env.pad
_unpad = env.unpad
_PAD = env.PAD_BLOCK


def kdf_rk(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    """Return ``(new root key, chain key)`` from HKDF-SHA256(salt=root key)."""
    out = prim.hkdf_sha256(dh_output, salt=root_key, info=RATCHET_INFO, length=64)
    return out[:32], out[32:]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """Return ``(message key, next chain key)`` via HMAC-SHA256 with 0x01/0x02."""
    return _hmac_pair(chain_key, CHAIN_MESSAGE_KEY, CHAIN_NEXT_KEY)


class SkippedKeys:
    """Hold skipped message keys by ``(ratchet key, N)`` in arrival order."""

    __slots__ = ("_keys", "limit")

    def __init__(self, limit: int = MAX_SKIPPED_KEYS) -> None:
        """Create an empty store that keeps at most ``limit`` keys."""
        self._keys: OrderedDict[tuple[bytes, int], tuple[bytes, int]] = OrderedDict()
        self.limit = limit

    def __len__(self) -> int:
        """Return the number of stored keys."""
        return len(self._keys)

    def __repr__(self) -> str:
        """Return the count only."""
        return f"SkippedKeys(count={len(self._keys)})"

    def get(self, ratchet_key: bytes, n: int) -> bytes | None:
        """Return the message key for ``(ratchet_key, n)`` if stored."""
        entry = self._keys.get((ratchet_key, n))
        return None if entry is None else entry[0]

    def add(self, ratchet_key: bytes, n: int, key: bytes, created_at: int) -> None:
        """Store a key; the oldest keys beyond the limit are evicted."""
        self._keys[(ratchet_key, n)] = (key, created_at)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def remove(self, ratchet_key: bytes, n: int) -> None:
        """Delete the key for ``(ratchet_key, n)`` if present."""
        self._keys.pop((ratchet_key, n), None)

    def purge_older_than(self, cutoff: int) -> int:
        """Delete keys created before ``cutoff``; return how many went."""
        stale = [k for k, (_mk, ts) in self._keys.items() if ts < cutoff]
        for k in stale:
            del self._keys[k]
        return len(stale)

    def items(self) -> list[tuple[bytes, int, bytes, int]]:
        """Return ``(ratchet key, n, message key, created_at)`` oldest first."""
        return [(dh, n, mk, ts) for (dh, n), (mk, ts) in self._keys.items()]

    def copy(self) -> SkippedKeys:
        """Return an independent copy."""
        other = SkippedKeys(self.limit)
        other._keys = OrderedDict(self._keys)
        return other


@dataclass(slots=True, repr=False, eq=True)
class RatchetState:
    """Hold one Double Ratchet session state (secrets included)."""

    dhs_private: bytes
    dhs_public: bytes
    dhr: bytes | None
    rk: bytes
    cks: bytes | None
    ckr: bytes | None
    ns: int
    nr: int
    pn: int
    #: The initiator's X3DH ephemeral public key; it names the session.
    base_key: bytes
    #: X3DH fields the initiator repeats until it receives a reply.
    pending: env.PrekeyFields | None = None
    #: Receiving ratchet keys of finished chains, newest last.
    old_dhr: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        """Return counters only, never keys."""
        return f"RatchetState(ns={self.ns}, nr={self.nr}, pn={self.pn})"

    def copy(self) -> RatchetState:
        """Return an independent copy."""
        return RatchetState(
            self.dhs_private,
            self.dhs_public,
            self.dhr,
            self.rk,
            self.cks,
            self.ckr,
            self.ns,
            self.nr,
            self.pn,
            self.base_key,
            self.pending,
            self.old_dhr,
        )

    def serialize(self) -> bytes:
        """Return the state as versioned bytes (contains secrets: seal it)."""
        flags = (
            (1 if self.dhr is not None else 0)
            | (2 if self.cks is not None else 0)
            | (4 if self.ckr is not None else 0)
            | (8 if self.pending is not None else 0)
        )
        parts = [
            struct.pack(
                ">BBB32s32s32s32sIII",
                _STATE_VERSION,
                flags,
                len(self.old_dhr),
                self.dhs_private,
                self.dhs_public,
                self.rk,
                self.base_key,
                self.ns,
                self.nr,
                self.pn,
            )
        ]
        for value in (self.dhr, self.cks, self.ckr):
            if value is not None:
                parts.append(value)
        if self.pending is not None:
            p = self.pending
            parts.append(
                struct.pack(
                    ">32s32sII",
                    p.identity_key,
                    p.base_key,
                    p.signed_prekey_id,
                    p.one_time_prekey_id or 0,
                )
            )
        parts.extend(self.old_dhr)
        return b"".join(parts)

    @classmethod
    def deserialize(cls, data: bytes) -> RatchetState:
        """Parse bytes made by :meth:`serialize`."""
        head = struct.Struct(">BBB32s32s32s32sIII")
        if len(data) < head.size:
            raise StateCorruptError()
        version, flags, n_old, dhs_priv, dhs_pub, rk, base, ns, nr, pn = (
            head.unpack_from(data, 0)
        )
        if version != _STATE_VERSION:
            raise UnsupportedVersionError("The stored state version is unknown.")
        if flags & ~0x0F or n_old > MAX_OLD_RECEIVE_KEYS:
            raise StateCorruptError()
        offset = head.size
        optional: list[bytes | None] = []
        for bit in (1, 2, 4):
            if flags & bit:
                optional.append(data[offset : offset + 32])
                offset += 32
            else:
                optional.append(None)
        pending = None
        if flags & 8:
            ik, ek, spk_id, opk_id = struct.unpack_from(">32s32sII", data, offset)
            pending = env.PrekeyFields(ik, ek, spk_id, opk_id or None)
            offset += 72
        old = tuple(data[offset + 32 * i : offset + 32 * (i + 1)] for i in range(n_old))
        offset += 32 * n_old
        if offset != len(data) or any(v is not None and len(v) != 32 for v in optional):
            raise StateCorruptError()
        return cls(
            dhs_priv,
            dhs_pub,
            optional[0],
            rk,
            optional[1],
            optional[2],
            ns,
            nr,
            pn,
            base,
            pending,
            old,
        )


def init_initiator(
    shared_secret: bytes,
    remote_ratchet_key: bytes,
    *,
    base_key: bytes,
    pending: env.PrekeyFields | None,
) -> RatchetState:
    """Start the initiator's state (RatchetInitAlice) from the X3DH secret."""
    private, public = prim.x25519_generate()
    rk, cks = kdf_rk(shared_secret, prim.x25519(private, remote_ratchet_key))
    return RatchetState(
        private, public, remote_ratchet_key, rk, cks, None, 0, 0, 0, base_key, pending
    )


def init_responder(
    shared_secret: bytes,
    ratchet_private: bytes,
    ratchet_public: bytes,
    *,
    base_key: bytes,
) -> RatchetState:
    """Start the responder's state (RatchetInitBob) with its signed prekey."""
    return RatchetState(
        ratchet_private,
        ratchet_public,
        None,
        shared_secret,
        None,
        None,
        0,
        0,
        0,
        base_key,
    )


@dataclass(slots=True, repr=False)
class SendPlan:
    """Hold the sending chain's next key and counter, to commit after storing."""

    cks: bytes
    ns: int

    def apply(self, state: RatchetState) -> None:
        """Advance the sending chain of ``state``."""
        state.cks = self.cks
        state.ns = self.ns


def prepare_send(
    state: RatchetState, plaintext: bytes, ad_suffix: bytes
) -> tuple[bytes, SendPlan]:
    """Encrypt ``plaintext`` into envelope bytes without changing ``state``."""
    cks = state.cks
    if cks is None:
        raise CannotSendError()
    mk, next_cks = _hmac_pair(cks, CHAIN_MESSAGE_KEY, CHAIN_NEXT_KEY)
    n = state.ns
    if state.pending is None:
        prefix = _ratchet_prefix(state.dhs_public, state.pn, n)
    else:
        prefix = env.prekey_prefix(state.pending, state.dhs_public, state.pn, n)
    nonce = _random(24)
    size = len(plaintext)
    if size > env.MAX_PLAINTEXT_BYTES:
        _pad(plaintext)  # raises the size error
    padded = plaintext + b"\x80" + bytes(_PAD - 1 - size % _PAD)
    body = _aead_encrypt(mk, nonce, padded, prefix + ad_suffix)
    return prefix + nonce + body, SendPlan(next_cks, n + 1)


@dataclass(slots=True, repr=False)
class ReceivePlan:
    """Hold the state changes of an authenticated message, ready to commit."""

    #: The new field values, or None when a stored skipped key was used.
    fields: tuple[object, ...] | None
    #: Skipped keys to store, as ``(ratchet key, n, message key)``.
    new_skipped: list[tuple[bytes, int, bytes]]
    #: The stored skipped key that was consumed, as ``(ratchet key, n)``.
    used_skipped: tuple[bytes, int] | None

    def apply(self, state: RatchetState, skipped: SkippedKeys, now: int) -> None:
        """Commit the changes to ``state`` and ``skipped``."""
        if self.fields is not None:
            (
                state.dhs_private,
                state.dhs_public,
                state.dhr,
                state.rk,
                state.cks,
                state.ckr,
                state.ns,
                state.nr,
                state.pn,
                state.old_dhr,
            ) = self.fields  # type: ignore[assignment]
            state.pending = None
        if self.used_skipped is not None:
            skipped.remove(*self.used_skipped)
        for dh, n, mk in self.new_skipped:
            skipped.add(dh, n, mk, now)


def _skip(
    chain_key: bytes,
    dh: bytes,
    start: int,
    until: int,
    out: list[tuple[bytes, int, bytes]],
) -> bytes:
    """Derive keys ``start..until-1`` into ``out``; return the chain key at N."""
    ck = chain_key
    for i in range(start, until):
        mk, ck = _hmac_pair(ck, CHAIN_MESSAGE_KEY, CHAIN_NEXT_KEY)
        out.append((dh, i, mk))
    return ck


def prepare_receive(
    state: RatchetState,
    skipped: SkippedKeys,
    message: env.Envelope,
    ad_suffix: bytes,
) -> tuple[bytes, ReceivePlan]:
    """Decrypt ``message`` without changing ``state`` or ``skipped``.

    Raise :class:`DuplicateMessageError`, :class:`TooManySkippedError`,
    :class:`LowOrderKeyError` or :class:`DecryptFailedError`; the bounds are
    checked before any key is derived.
    """
    dh, n = message.ratchet_key, message.n
    ad = message.prefix + ad_suffix

    stored = skipped.get(dh, n)
    if stored is not None:
        padded = _aead_decrypt(stored, message.nonce, message.ciphertext, ad)
        return _unpad(padded), ReceivePlan(None, [], (dh, n))

    new_skipped: list[tuple[bytes, int, bytes]] = []
    if dh == state.dhr:
        ckr = state.ckr
        nr = state.nr
        if ckr is None:
            raise DecryptFailedError()
        if n < nr:
            raise DuplicateMessageError()
        if n - nr > MAX_SKIP:
            raise TooManySkippedError()
        if n > nr:
            ckr = _skip(ckr, dh, nr, n, new_skipped)
        mk, next_ckr = _hmac_pair(ckr, CHAIN_MESSAGE_KEY, CHAIN_NEXT_KEY)
        padded = _aead_decrypt(mk, message.nonce, message.ciphertext, ad)
        fields = (
            state.dhs_private,
            state.dhs_public,
            dh,
            state.rk,
            state.cks,
            next_ckr,
            state.ns,
            n + 1,
            state.pn,
            state.old_dhr,
        )
        return _unpad(padded), ReceivePlan(fields, new_skipped, None)

    if dh in state.old_dhr:
        raise DuplicateMessageError()
    if n > MAX_SKIP:
        raise TooManySkippedError()
    old_chain = state.ckr is not None and state.dhr is not None
    if old_chain and message.pn > state.nr and message.pn - state.nr > MAX_SKIP:
        raise TooManySkippedError()

    old_dhr = state.old_dhr
    if old_chain:
        assert state.ckr is not None and state.dhr is not None
        _skip(state.ckr, state.dhr, state.nr, message.pn, new_skipped)
        old_dhr = (old_dhr + (state.dhr,))[-MAX_OLD_RECEIVE_KEYS:]
    rk, ckr = kdf_rk(state.rk, prim.x25519(state.dhs_private, dh))
    new_private, new_public = prim.x25519_generate()
    rk, cks = kdf_rk(rk, prim.x25519(new_private, dh))
    ckr = _skip(ckr, dh, 0, n, new_skipped)
    mk, next_ckr = _hmac_pair(ckr, CHAIN_MESSAGE_KEY, CHAIN_NEXT_KEY)
    padded = _aead_decrypt(mk, message.nonce, message.ciphertext, ad)
    fields = (
        new_private,
        new_public,
        dh,
        rk,
        cks,
        next_ckr,
        0,
        n + 1,
        state.ns,
        old_dhr,
    )
    return _unpad(padded), ReceivePlan(fields, new_skipped, None)
