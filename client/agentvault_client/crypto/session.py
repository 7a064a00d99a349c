"""Keep per-peer-device session records: current and previous ratchet states.

A :class:`SessionRecord` holds every ratchet state shared with one peer
device. The newest state sends; on receive, the current state is tried first,
then the previous ones, and the state that decrypts becomes current. This
resolves simultaneous initiation, where both devices start a session at once.
Skipped message keys are kept per record, at most 2000, oldest evicted first.

Associated data of every message: every envelope byte before the nonce, then
``0xED || sender Ed25519 key || 0xED || recipient Ed25519 key ||
u16 len || sender device id || u16 len || recipient device id`` (UTF-8).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Protocol

from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import ratchet, x3dh
from agentvault_client.crypto.keys import (
    IdentityKeyPair,
    OneTimePrekey,
    PrekeyBundle,
    SignedPrekey,
)
from agentvault_client.errors import (
    BadEnvelopeError,
    DecryptFailedError,
    DuplicateMessageError,
    IdentityChangedError,
    NoSessionError,
    ProtocolError,
    SdkError,
    StateCorruptError,
    UnknownPrekeyError,
    UnsupportedVersionError,
)

__all__ = [
    "MAX_ARCHIVED_STATES",
    "DecryptPlan",
    "EncryptPlan",
    "LocalDevice",
    "PrekeySource",
    "SessionRecord",
    "session_ad",
]

#: Previous states kept besides the current one.
MAX_ARCHIVED_STATES = 10
ED25519_TYPE = b"\xed"
_RECORD_VERSION = 1
_MAX_DEVICE_ID_BYTES = 255


def _device_id_bytes(device_id: str) -> bytes:
    raw = device_id.encode("utf-8")
    if not raw or len(raw) > _MAX_DEVICE_ID_BYTES:
        raise ProtocolError("A device id must be 1 to 255 UTF-8 bytes.")
    return raw


def session_ad(
    sender_identity: bytes,
    recipient_identity: bytes,
    sender_device_id: str,
    recipient_device_id: str,
) -> bytes:
    """Return the session part of the associated data, sender first."""
    sender = _device_id_bytes(sender_device_id)
    recipient = _device_id_bytes(recipient_device_id)
    return b"".join(
        (
            ED25519_TYPE,
            sender_identity,
            ED25519_TYPE,
            recipient_identity,
            struct.pack(">H", len(sender)),
            sender,
            struct.pack(">H", len(recipient)),
            recipient,
        )
    )


@dataclass(frozen=True, slots=True, repr=False)
class LocalDevice:
    """Hold this device's identity key and server-assigned device id."""

    identity: IdentityKeyPair
    device_id: str

    def __repr__(self) -> str:
        """Return the device id only."""
        return f"LocalDevice(device_id={self.device_id!r})"


class PrekeySource(Protocol):
    """Look up this device's own prekey private keys by id."""

    def signed_prekey(self, prekey_id: int) -> SignedPrekey | None:
        """Return the signed prekey with ``prekey_id``, if still held."""

    def one_time_prekey(self, prekey_id: int) -> OneTimePrekey | None:
        """Return the one-time prekey with ``prekey_id``, if still held."""


@dataclass(slots=True, repr=False)
class EncryptPlan:
    """Hold the sending-chain advance to commit once the envelope is stored."""

    state: ratchet.RatchetState
    plan: ratchet.SendPlan

    def apply(self) -> None:
        """Advance the sending chain."""
        self.plan.apply(self.state)


@dataclass(slots=True, repr=False)
class DecryptPlan:
    """Hold every change an authenticated message makes, ready to commit.

    ``consumed_one_time_prekey`` names the one-time prekey whose private key
    must be deleted in the same transaction that stores the record.
    """

    record: SessionRecord
    state: ratchet.RatchetState
    index: int | None
    plan: ratchet.ReceivePlan
    consumed_one_time_prekey: int | None
    new_identity: bytes | None

    def apply(self, now: int | None = None) -> None:
        """Commit the changes to the record."""
        record = self.record
        stamp = int(time.time()) if now is None else now
        self.plan.apply(self.state, record.skipped, stamp)
        if self.index is None:
            record.states.insert(0, self.state)
            del record.states[MAX_ARCHIVED_STATES + 1 :]
        elif self.index > 0:
            record.states.insert(0, record.states.pop(self.index))


class SessionRecord:
    """Hold all ratchet states and skipped keys shared with one peer device."""

    __slots__ = ("_ad", "peer_device_id", "peer_identity", "skipped", "states")

    def __init__(
        self,
        peer_device_id: str,
        peer_identity: bytes,
        states: list[ratchet.RatchetState] | None = None,
        skipped: ratchet.SkippedKeys | None = None,
    ) -> None:
        """Create a record for ``peer_device_id`` with its Ed25519 identity key."""
        _device_id_bytes(peer_device_id)
        if len(peer_identity) != 32:
            raise ProtocolError("An identity key must be 32 bytes.")
        self.peer_device_id = peer_device_id
        self.peer_identity = peer_identity
        self.states: list[ratchet.RatchetState] = states or []
        self.skipped = skipped if skipped is not None else ratchet.SkippedKeys()
        self._ad: dict[tuple[str, bool], bytes] = {}

    def __repr__(self) -> str:
        """Return the peer device id and counts only."""
        return (
            f"SessionRecord(peer_device_id={self.peer_device_id!r}, "
            f"states={len(self.states)}, skipped={len(self.skipped)})"
        )

    # -- construction -------------------------------------------------------

    @classmethod
    def from_bundle(cls, local: LocalDevice, bundle: PrekeyBundle) -> SessionRecord:
        """Verify ``bundle``, run X3DH and return a record ready to send."""
        record = cls(bundle.device_id, bundle.identity_key)
        record.initiate(local, bundle)
        return record

    @classmethod
    def for_incoming(cls, peer_device_id: str, data: bytes) -> SessionRecord:
        """Return an empty record for the sender of a first prekey envelope.

        The peer identity is the one the envelope claims; the message still
        has to decrypt, which proves the sender holds that key.
        """
        message = env.parse(data)
        if message.prekey is None:
            raise NoSessionError()
        return cls(peer_device_id, message.prekey.identity_key)

    def initiate(self, local: LocalDevice, bundle: PrekeyBundle) -> None:
        """Start a new current state from ``bundle``; older states are kept."""
        if bundle.device_id != self.peer_device_id:
            raise ProtocolError("The bundle is for another device.")
        if bundle.identity_key != self.peer_identity:
            raise IdentityChangedError()
        result = x3dh.initiate(local.identity, bundle)
        state = ratchet.init_initiator(
            result.shared_secret,
            bundle.signed_prekey,
            base_key=result.fields.base_key,
            pending=result.fields,
        )
        self.states.insert(0, state)
        del self.states[MAX_ARCHIVED_STATES + 1 :]

    # -- associated data ----------------------------------------------------

    def _session_ad(self, local: LocalDevice, sending: bool) -> bytes:
        key = (local.device_id, sending)
        ad = self._ad.get(key)
        if ad is None:
            mine = (local.identity.public_key, local.device_id)
            theirs = (self.peer_identity, self.peer_device_id)
            first, second = (mine, theirs) if sending else (theirs, mine)
            ad = session_ad(first[0], second[0], first[1], second[1])
            self._ad[key] = ad
        return ad

    # -- encrypt ------------------------------------------------------------

    @property
    def has_session(self) -> bool:
        """Tell whether a state exists."""
        return bool(self.states)

    @property
    def can_send(self) -> bool:
        """Tell whether the current state has a sending chain."""
        return bool(self.states) and self.states[0].cks is not None

    def prepare_encrypt(
        self, local: LocalDevice, plaintext: bytes
    ) -> tuple[bytes, EncryptPlan]:
        """Return envelope bytes and the plan that commits the sending step."""
        if not self.states:
            raise NoSessionError()
        state = self.states[0]
        data, plan = ratchet.prepare_send(
            state, plaintext, self._session_ad(local, True)
        )
        return data, EncryptPlan(state, plan)

    def encrypt(self, local: LocalDevice, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` and commit the sending step in memory."""
        data, plan = self.prepare_encrypt(local, plaintext)
        plan.apply()
        return data

    # -- decrypt ------------------------------------------------------------

    def prepare_decrypt(
        self, local: LocalDevice, data: bytes, prekeys: PrekeySource | None = None
    ) -> tuple[bytes, DecryptPlan]:
        """Decrypt envelope bytes without changing the record.

        Return the plaintext and the plan that commits the changes. Raise a
        :class:`ProtocolError` or :class:`CryptoError` subclass otherwise;
        the record is then exactly as before.
        """
        message = env.parse(data)
        ad = self._session_ad(local, False)

        if message.prekey is not None:
            fields = message.prekey
            if fields.identity_key != self.peer_identity:
                raise IdentityChangedError()
            for index, state in enumerate(self.states):
                if state.base_key == fields.base_key:
                    return self._receive_on(index, state, message, ad)
            return self._receive_new(local, message, fields, ad, prekeys)

        if not self.states:
            raise NoSessionError()
        first_error: SdkError | None = None
        matched_error: SdkError | None = None
        for index, state in enumerate(self.states):
            try:
                return self._receive_on(index, state, message, ad)
            except DuplicateMessageError:
                raise
            except (ProtocolError, DecryptFailedError) as exc:
                if first_error is None:
                    first_error = exc
                if matched_error is None and state.dhr == message.ratchet_key:
                    matched_error = exc
            except SdkError as exc:
                if first_error is None:
                    first_error = exc
        raise matched_error or first_error or DecryptFailedError()

    def _receive_on(
        self,
        index: int,
        state: ratchet.RatchetState,
        message: env.Envelope,
        ad: bytes,
    ) -> tuple[bytes, DecryptPlan]:
        plaintext, plan = ratchet.prepare_receive(state, self.skipped, message, ad)
        return plaintext, DecryptPlan(self, state, index, plan, None, None)

    def _receive_new(
        self,
        local: LocalDevice,
        message: env.Envelope,
        fields: env.PrekeyFields,
        ad: bytes,
        prekeys: PrekeySource | None,
    ) -> tuple[bytes, DecryptPlan]:
        if prekeys is None:
            raise UnknownPrekeyError()
        spk = prekeys.signed_prekey(fields.signed_prekey_id)
        if spk is None:
            raise UnknownPrekeyError()
        opk = None
        if fields.one_time_prekey_id is not None:
            opk = prekeys.one_time_prekey(fields.one_time_prekey_id)
            if opk is None:
                raise UnknownPrekeyError()
        secret = x3dh.respond(local.identity, spk, opk, fields)
        state = ratchet.init_responder(
            secret, spk.private_key, spk.public_key, base_key=fields.base_key
        )
        plaintext, plan = ratchet.prepare_receive(state, self.skipped, message, ad)
        return plaintext, DecryptPlan(
            self, state, None, plan, fields.one_time_prekey_id, fields.identity_key
        )

    def decrypt(
        self, local: LocalDevice, data: bytes, prekeys: PrekeySource | None = None
    ) -> bytes:
        """Decrypt envelope bytes and commit the changes in memory."""
        plaintext, plan = self.prepare_decrypt(local, data, prekeys)
        plan.apply()
        return plaintext

    # -- persistence --------------------------------------------------------

    def serialize(self, *, include_skipped: bool = True) -> bytes:
        """Return the record as versioned bytes (contains secrets: seal it).

        With ``include_skipped=False`` the skipped keys are left out; the
        store keeps them as rows of their own.
        """
        device = _device_id_bytes(self.peer_device_id)
        parts = [
            struct.pack(
                ">BB32sH",
                _RECORD_VERSION,
                1 if include_skipped else 0,
                self.peer_identity,
                len(device),
            ),
            device,
            struct.pack(">B", len(self.states)),
        ]
        for state in self.states:
            blob = state.serialize()
            parts.append(struct.pack(">H", len(blob)))
            parts.append(blob)
        if include_skipped:
            items = self.skipped.items()
            parts.append(struct.pack(">I", len(items)))
            for dh, n, mk, ts in items:
                parts.append(struct.pack(">32sIQ32s", dh, n, ts, mk))
        return b"".join(parts)

    @classmethod
    def deserialize(
        cls, data: bytes, skipped: ratchet.SkippedKeys | None = None
    ) -> SessionRecord:
        """Parse bytes made by :meth:`serialize`; ``skipped`` fills a lean record."""
        try:
            return cls._deserialize(data, skipped)
        except (struct.error, IndexError, UnicodeDecodeError, BadEnvelopeError):
            raise StateCorruptError() from None

    @classmethod
    def _deserialize(
        cls, data: bytes, skipped: ratchet.SkippedKeys | None
    ) -> SessionRecord:
        version, has_skipped, identity, dev_len = struct.unpack_from(">BB32sH", data)
        if version != _RECORD_VERSION:
            raise UnsupportedVersionError("The stored record version is unknown.")
        offset = struct.calcsize(">BB32sH")
        device = data[offset : offset + dev_len].decode("utf-8")
        offset += dev_len
        (count,) = struct.unpack_from(">B", data, offset)
        offset += 1
        states = []
        for _ in range(count):
            (size,) = struct.unpack_from(">H", data, offset)
            offset += 2
            states.append(
                ratchet.RatchetState.deserialize(data[offset : offset + size])
            )
            offset += size
        keys = skipped if skipped is not None else ratchet.SkippedKeys()
        if has_skipped:
            (n_keys,) = struct.unpack_from(">I", data, offset)
            offset += 4
            for _ in range(n_keys):
                dh, n, ts, mk = struct.unpack_from(">32sIQ32s", data, offset)
                offset += 76
                keys.add(dh, n, mk, ts)
        if offset != len(data):
            raise StateCorruptError()
        return cls(device, identity, states, keys)
