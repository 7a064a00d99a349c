"""Provide :class:`AsyncAgentVaultClient`, the asyncio core of the SDK.

The synchronous :class:`agentvault_client.client.AgentVaultClient` runs this
class on a private event loop, so the logic exists once.

What the client does, in order of a device's life:

- ``enroll``: create the profile and identity key, sign the invite proof,
  ``POST /enrollments``; ``wait_for_approval`` polls ``/devices/me`` and
  publishes prekeys once the device is active;
- tokens: ``/auth/challenge`` then ``/auth/token``, cached in the profile and
  renewed a minute before expiry or when the server refuses one;
- ``send``: one envelope per active device of the room but this one,
  sessions opened from claimed prekey bundles; on 409 ``device_mismatch`` or
  410 ``stale_devices`` the device list is fetched again and the send is
  retried with the same client message id (the server keeps it idempotent,
  the store's outbox keeps the envelope bytes);
- receive: the relay socket (backlog, then live), falling back to the REST
  inbox while the socket is unavailable; each envelope is decrypted and
  stored in the message log before it is acknowledged; ``messages`` hands
  stored messages to the application in relay order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import random
import shutil
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self

import httpx

from agentvault_client.api import ApiClient
from agentvault_client.crypto.envelope import parse as parse_envelope
from agentvault_client.crypto.keys import IdentityKeyPair
from agentvault_client.crypto.safety import fingerprint, safety_number
from agentvault_client.errors import (
    ApiError,
    DeviceMismatchError,
    DevicePendingError,
    DeviceRevokedError,
    IdentityChangedError,
    NotEnrolledError,
    NotFoundError,
    ProfileError,
    ProtocolError,
    RelayClosedError,
    SdkError,
    StaleDevicesError,
    TransportError,
    UnauthorizedError,
)
from agentvault_client.messages import (
    KIND_TEXT,
    KIND_UNDECRYPTABLE,
    Message,
    MessageLog,
    decode_payload,
    encode_payload,
)
from agentvault_client.profile import DEFAULT_PROFILE, Profile, ProfileLock
from agentvault_client.relay import RelayConnection, RelayUnavailableError
from agentvault_client.store import Store, create_key_file, read_key_file

__all__ = [
    "AUTH_AUDIENCE",
    "AsyncAgentVaultClient",
    "DeviceInfo",
    "Enrollment",
    "Room",
    "RoomDevice",
    "SendResult",
]

logger = logging.getLogger(__name__)

AUTH_AUDIENCE = "agentvault"
AUTH_DOMAIN = b"AgentVault-auth-v1"
ENROLL_DOMAIN = b"AgentVault-enroll-v1"
#: Publish more one-time prekeys when fewer than this are left on the server.
PREKEY_REFILL_BELOW = 10
PREKEY_BATCH = 100
#: Longest wait between reconnection attempts, in seconds.
MAX_BACKOFF = 8.0
#: How long a REST-only period lasts before the relay is tried again.
REST_ONLY_PERIOD = 30.0
LOCK_TIMEOUT = 60.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError("A base64 field is not a string.")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError("A base64 field is not valid base64.") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Enrollment:
    """The server's answer to an enrollment: ids, status and fingerprint."""

    device_id: str
    member_id: str
    tenant_id: str
    status: str
    fingerprint: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceInfo:
    """This device as the server sees it (``GET /devices/me``)."""

    device_id: str
    member_id: str
    member_name: str
    name: str
    status: str
    fingerprint: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceInfo:
        """Parse the server's device shape."""
        return cls(
            device_id=str(data["id"]),
            member_id=str(data["member_id"]),
            member_name=str(data.get("member_name", "")),
            name=str(data.get("name", "")),
            status=str(data["status"]),
            fingerprint=str(data.get("fingerprint", "")),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Room:
    """A room this device's member belongs to."""

    room_id: str
    name: str
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class RoomDevice:
    """An active device of a room member, with its identity key."""

    device_id: str
    member_id: str
    name: str
    identity_key: bytes
    fingerprint: str

    def __repr__(self) -> str:
        """Return ids only."""
        return f"RoomDevice(device_id={self.device_id!r}, member_id={self.member_id!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """The server's receipt for a sent message."""

    message_id: str
    client_message_id: str
    server_ts: str
    devices: int


class AsyncAgentVaultClient:
    """Talk to an AgentVault server as one enrolled device (asyncio)."""

    def __init__(
        self,
        profile: Profile,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        """Create a client for an existing profile; see :meth:`open`."""
        self.profile = profile
        self.poll_interval = poll_interval
        self._api = ApiClient(
            profile.server_url, tokens=self._token, transport=transport
        )
        self._lock = ProfileLock(profile.path / "lock")
        self._mutex = asyncio.Lock()
        self._token_mutex = asyncio.Lock()
        self._store: Store | None = None
        self._log: MessageLog | None = None
        self._identity: IdentityKeyPair | None = None
        self._access_token: str | None = None
        self._token_expiry = 0.0
        self._room_devices: dict[str, list[RoomDevice]] = {}
        self._new_messages = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._receiver: asyncio.Task[None] | None = None
        # Check the server's prekeys at the first catch-up: a device enrolled
        # with --no-wait and approved later has published none yet.
        self._prekey_check = True
        #: True while the relay socket is open (False when polling REST).
        self.connected = False

    def __repr__(self) -> str:
        """Return the profile and device id only."""
        return (
            f"AsyncAgentVaultClient(profile={self.profile.name!r}, "
            f"device_id={self.profile.device_id!r})"
        )

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        name: str = DEFAULT_PROFILE,
        *,
        home: Path | None = None,
        **kwargs: Any,
    ) -> AsyncAgentVaultClient:
        """Return a client for the enrolled profile ``name``."""
        profile = Profile.load(name, home=home)
        profile.require_device_id()
        return cls(profile, **kwargs)

    @classmethod
    async def enroll(
        cls,
        *,
        server_url: str,
        invite_token: str,
        device_name: str,
        name: str = DEFAULT_PROFILE,
        home: Path | None = None,
        **kwargs: Any,
    ) -> AsyncAgentVaultClient:
        """Create profile ``name``, generate the identity key and enroll.

        The device is ``pending`` afterwards; show :attr:`fingerprint` to
        the admin and call :meth:`wait_for_approval`. The profile is
        removed again when the server refuses the enrollment.
        """
        profile = Profile.create(name, server_url=server_url, home=home)
        try:
            client = cls(profile, **kwargs)
            await client._enroll(invite_token.strip(), device_name)
        except BaseException:
            shutil.rmtree(profile.path, ignore_errors=True)
            raise
        return client

    async def _enroll(self, invite_token: str, device_name: str) -> Enrollment:
        create_key_file(self.profile.key_path)
        async with self._state() as store:
            identity = store.create_identity()
        digest = hashlib.sha256(invite_token.encode("utf-8")).digest()
        proof = identity.sign(ENROLL_DOMAIN + digest)

        body = await self._api.post(
            "/enrollments",
            {
                "invite_token": invite_token,
                "identity_key": _b64(identity.public_key),
                "device_name": device_name,
                "proof": _b64(proof),
            },
            auth=False,
            retries=0,
        )
        result = Enrollment(
            device_id=str(body["device_id"]),
            member_id=str(body["member_id"]),
            tenant_id=str(body["tenant_id"]),
            status=str(body["status"]),
            fingerprint=str(body["fingerprint"]),
        )
        if result.fingerprint != fingerprint(identity.public_key):
            raise ProtocolError("The server's fingerprint does not match this key.")

        async with self._state() as store:
            store.set_device_id(result.device_id)
        self.profile.config.update(
            device_id=result.device_id,
            member_id=result.member_id,
            tenant_id=result.tenant_id,
            device_name=device_name,
            status=result.status,
        )
        self.profile.save()
        logger.info("Enrolled device %s (pending)", result.device_id)
        return result

    async def aclose(self) -> None:
        """Stop receiving and close the connections and local databases."""
        await self.stop_receiving()
        await self._api.aclose()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> Self:
        """Return the client itself."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the client."""
        await self.aclose()

    # -- identity and local state -------------------------------------------

    @property
    def device_id(self) -> str:
        """Return this device's id."""
        return self.profile.require_device_id()

    @property
    def member_id(self) -> str:
        """Return the id of the member this device belongs to."""
        value = self.profile.config.get("member_id")
        if not value:
            raise NotEnrolledError()
        return str(value)

    @contextlib.asynccontextmanager
    async def _state(self) -> AsyncIterator[Store]:
        """Hold the profile lock and yield an up-to-date store.

        The store is reopened when another process used the profile since
        this one last held the lock, so no stale session state is used.
        """
        async with self._mutex:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while (changed := self._lock.try_acquire()) is None:
                if time.monotonic() > deadline:
                    raise ProfileError(
                        f"Profile {self.profile.name!r} stays locked by another "
                        "process."
                    )
                await asyncio.sleep(0.02)
            try:
                if changed or self._store is None:
                    if self._store is not None:
                        self._store.close()
                    self._store = Store.open(
                        self.profile.store_path, key_file=self.profile.key_path
                    )
                yield self._store
            finally:
                self._lock.release()

    def _message_log(self) -> MessageLog:
        if self._log is None:
            key = read_key_file(self.profile.key_path)
            self._log = MessageLog.open(self.profile.messages_path, key)
        return self._log

    async def identity(self) -> IdentityKeyPair:
        """Return this device's identity key pair (loaded once)."""
        if self._identity is None:
            async with self._state() as store:
                identity = store.get_identity()
            if identity is None:
                raise NotEnrolledError()
            self._identity = identity
        return self._identity

    async def fingerprint(self) -> str:
        """Return this device's fingerprint, as the admin console shows it."""
        return fingerprint((await self.identity()).public_key)

    async def safety_number(self, device: RoomDevice | str) -> str:
        """Return the 60-digit safety number shared with a peer device.

        With a device id, the pinned identity key is used (the key this
        device trusted on first use); else the key the server lists.
        """
        identity = await self.identity()
        if isinstance(device, str):
            device_id = device
            async with self._state() as store:
                key = store.pinned_identity(device_id)
            if key is None:
                raise NotFoundError(
                    "No identity key is pinned for that device yet; pass a device "
                    "from a room listing."
                )
        else:
            device_id, key = device.device_id, device.identity_key
            async with self._state() as store:
                pinned = store.pinned_identity(device_id)
            if pinned is not None and pinned != key:
                raise IdentityChangedError()
        return safety_number(identity.public_key, self.device_id, key, device_id)

    # -- tokens -------------------------------------------------------------

    async def _token(self, fresh: bool = False) -> str:
        """Return a bearer token, renewing it when ``fresh`` or about to expire."""
        async with self._token_mutex:
            if not fresh:
                if self._access_token and time.time() < self._token_expiry - 60:
                    return self._access_token
                cached = self.profile.read_token()
                if cached is not None:
                    self._access_token = cached
                    self._token_expiry = time.time() + 120
                    return cached
            return await self._new_token()

    async def _new_token(self) -> str:
        identity = await self.identity()
        device_id = self.device_id
        try:
            challenge_body = await self._api.post(
                "/auth/challenge", {"device_id": device_id}, auth=False
            )
            challenge = _unb64(challenge_body["challenge"])
            message = (
                AUTH_DOMAIN
                + challenge
                + uuid.UUID(device_id).bytes
                + AUTH_AUDIENCE.encode("utf-8")
            )
            body = await self._api.post(
                "/auth/token",
                {
                    "device_id": device_id,
                    "challenge": _b64(challenge),
                    "signature": _b64(identity.sign(message)),
                },
                auth=False,
            )
        except ApiError as exc:
            if exc.code == "challenge_failed":
                self.profile.forget_token()
                raise DeviceRevokedError(
                    "The server refused this device's key: the device was revoked "
                    "or its member deactivated."
                ) from None
            raise
        token = str(body["access_token"])
        expires_in = float(body.get("expires_in", 900))
        self._access_token = token
        self._token_expiry = time.time() + expires_in
        self.profile.write_token(token, expires_in)
        return token

    # -- device status and prekeys --------------------------------------------

    async def device_info(self) -> DeviceInfo:
        """Return this device as the server sees it (pending devices too)."""
        return DeviceInfo.from_json(await self._api.get("/devices/me"))

    async def wait_for_approval(
        self,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        on_poll: Callable[[DeviceInfo, float], None] | None = None,
    ) -> DeviceInfo:
        """Poll until an admin approves this device; then publish prekeys.

        ``on_poll(info, elapsed)`` is called after every poll (for a progress
        indicator). Raise :class:`DeviceRevokedError` if the device is
        revoked, or :class:`DevicePendingError` when ``timeout`` passes.
        """
        started = time.monotonic()
        while True:
            info = await self.device_info()
            elapsed = time.monotonic() - started
            if on_poll is not None:
                on_poll(info, elapsed)
            if info.status == "revoked":
                raise DeviceRevokedError()
            if info.status == "active":
                break
            if timeout is not None and elapsed >= timeout:
                raise DevicePendingError()
            await asyncio.sleep(poll_interval)

        self.profile.config["status"] = "active"
        self.profile.save()
        await self.refill_prekeys()
        return info

    async def publish_prekeys(self, count: int = PREKEY_BATCH) -> int:
        """Generate and upload ``count`` one-time prekeys; return the server count."""
        async with self._state() as store:
            body = store.prekey_upload(count)
        result = await self._api.put("/devices/me/prekeys", body)
        return int(result["one_time_prekeys"])

    async def prekey_status(self) -> dict[str, Any]:
        """Return ``{one_time_prekeys, signed_prekey_id}`` from the server."""
        return dict(await self._api.get("/devices/me/prekeys"))

    async def refill_prekeys(self, minimum: int = PREKEY_REFILL_BELOW) -> int:
        """Publish a batch of prekeys when fewer than ``minimum`` are left."""
        status = await self.prekey_status()
        count = int(status.get("one_time_prekeys") or 0)
        if status.get("signed_prekey_id") is None or count < minimum:
            count = await self.publish_prekeys()
            logger.info("Published prekeys; %d on the server", count)
        return count

    # -- rooms --------------------------------------------------------------

    async def rooms(self) -> list[Room]:
        """Return the rooms this device's member belongs to."""
        body = await self._api.get("/rooms")
        items = body["rooms"] if isinstance(body, dict) else body
        return [
            Room(str(r["id"]), str(r.get("name", "")), tuple(r.get("members", [])))
            for r in items
        ]

    async def resolve_room(self, ref: str) -> Room:
        """Return the room whose id or (unique) name is ``ref``."""
        rooms = await self.rooms()
        for room in rooms:
            if room.room_id == ref:
                return room
        named = [room for room in rooms if room.name == ref]
        if len(named) == 1:
            return named[0]
        if named:
            raise ProtocolError(f"Several rooms are named {ref!r}; use the room id.")
        raise NotFoundError(f"No room {ref!r} is visible to this device.")

    async def room_devices(
        self, room_id: str, *, refresh: bool = False
    ) -> list[RoomDevice]:
        """Return the active devices of the room's members (cached)."""
        if not refresh and room_id in self._room_devices:
            return self._room_devices[room_id]
        body = await self._api.get(f"/rooms/{room_id}/devices")
        devices = [
            RoomDevice(
                device_id=str(d["device_id"]),
                member_id=str(d["member_id"]),
                name=str(d.get("name", "")),
                identity_key=_unb64(d["identity_key"]),
                fingerprint=str(d.get("fingerprint", "")),
            )
            for d in body["devices"]
        ]
        self._room_devices[room_id] = devices
        return devices

    # -- sending ------------------------------------------------------------

    async def _ensure_sessions(self, devices: list[RoomDevice]) -> None:
        """Open a session with every device that has none, from its bundle."""
        need: dict[str, RoomDevice] = {}
        async with self._state() as store:
            for device in devices:
                pinned = store.pinned_identity(device.device_id)
                if pinned is not None and pinned != device.identity_key:
                    raise IdentityChangedError()
                record = store.load_session(device.device_id)
                if record is None or not record.can_send:
                    need[device.device_id] = device
        if not need:
            return

        members = sorted({device.member_id for device in need.values()})
        for member_id in members:
            bundles = await self._api.post(f"/members/{member_id}/prekey-bundles")
            async with self._state() as store:
                for bundle in bundles:
                    device_id = str(bundle.get("device_id"))
                    if device_id not in need:
                        continue
                    if _unb64(bundle["identity_key"]) != need[device_id].identity_key:
                        raise IdentityChangedError()
                    store.start_session(bundle)
                    del need[device_id]
        if need:
            raise ProtocolError(
                "No prekeys are published for device(s) "
                + ", ".join(sorted(need))
                + "; they must come online once after approval."
            )

    async def send(
        self,
        room_id: str,
        text: str,
        *,
        kind: str = KIND_TEXT,
        reply_to: str | None = None,
        client_message_id: str | None = None,
        retry_for: float = 120.0,
    ) -> SendResult:
        """Encrypt ``text`` for every device of the room and send it.

        The client message id makes the send idempotent: retrying with the
        same id after an error sends the same envelopes and stores nothing
        twice. Transport failures are retried for ``retry_for`` seconds.
        """
        cmid = client_message_id or str(uuid.uuid4())
        payload = encode_payload(
            text, room_id=room_id, client_message_id=cmid, kind=kind, reply_to=reply_to
        )
        me = self.device_id
        last_error: SdkError | None = None
        for attempt in range(4):
            devices = await self.room_devices(room_id, refresh=attempt > 0)
            targets = [device for device in devices if device.device_id != me]
            await self._ensure_sessions(targets)
            async with self._state() as store:
                envelopes = [
                    {
                        "device_id": device.device_id,
                        "ciphertext": _b64(
                            store.encrypt(device.device_id, payload, message_ref=cmid)
                        ),
                    }
                    for device in targets
                ]
            try:
                body = await self._post_message(room_id, cmid, envelopes, retry_for)
            except (DeviceMismatchError, StaleDevicesError) as exc:
                logger.info("Device list of room %s changed; retrying", room_id)
                last_error = exc
                continue

            async with self._state() as store:
                for device in targets:
                    store.mark_sent(device.device_id, cmid)
            return SendResult(
                message_id=str(body["message_id"]),
                client_message_id=cmid,
                server_ts=str(body.get("server_ts", "")),
                devices=len(targets),
            )
        assert last_error is not None
        raise last_error

    async def _post_message(
        self,
        room_id: str,
        cmid: str,
        envelopes: list[dict[str, str]],
        retry_for: float,
    ) -> Any:
        deadline = time.monotonic() + retry_for
        delay = 0.5
        while True:
            try:
                return await self._api.post(
                    f"/rooms/{room_id}/messages",
                    {"client_message_id": cmid, "envelopes": envelopes},
                )
            except (TransportError, ApiError) as exc:
                retriable = isinstance(exc, TransportError) or (
                    isinstance(exc, ApiError) and exc.status in (502, 503, 504)
                )
                if not retriable or time.monotonic() + delay > deadline:
                    raise
                logger.info("Send of %s failed (%s); retrying", cmid, exc.code)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    # -- receiving: decrypt and store -----------------------------------------

    def _open_entry(self, store: Store, entry: dict[str, Any]) -> dict[str, Any]:
        """Decrypt one relay entry into message-log fields (never raises SDK errors)."""
        fields: dict[str, Any] = {
            "seq": int(entry["seq"]),
            "message_id": str(entry["message_id"]),
            "room_id": str(entry["room_id"]),
            "sender_device_id": str(entry["sender_device_id"]),
            "sender_member_id": str(entry["sender_member_id"]),
            "server_ts": str(entry.get("server_ts", "")),
            "kind": KIND_UNDECRYPTABLE,
            "text": "",
            "outgoing": str(entry["sender_member_id"]) == self.member_id,
        }
        try:
            data = _unb64(entry["ciphertext"])
            if parse_envelope(data).prekey is not None:
                self._prekey_check = True
            plaintext = store.decrypt(fields["sender_device_id"], data)
            header, text = decode_payload(plaintext)
            if header["room"] != fields["room_id"]:
                raise ProtocolError("The message was sealed for another room.")
        except SdkError as exc:
            logger.warning(
                "Envelope %s from device %s failed: %s",
                fields["seq"],
                fields["sender_device_id"],
                exc.code,
            )
            fields["error"] = exc.code
            return fields
        fields.update(
            kind=str(header["kind"]),
            text=text,
            client_message_id=header.get("id"),
            reply_to=header.get("reply_to"),
            sent_at=header.get("ts"),
        )
        return fields

    async def _ingest(self, entries: list[dict[str, Any]]) -> int:
        """Decrypt and store relay entries in order; return the highest seq."""
        log = self._message_log()
        top = 0
        added = 0
        async with self._state() as store:
            for entry in entries:
                seq = int(entry["seq"])
                if log.has(str(entry["message_id"])):
                    log.set_last_seq(seq)
                else:
                    added += log.add(self._open_entry(store, entry))
                top = max(top, seq)
        if added:
            self._new_messages.set()
        return top

    async def poll_inbox(self, *, limit: int = 100) -> int:
        """Fetch, store and acknowledge everything queued over REST.

        Return how many envelopes were fetched.
        """
        log = self._message_log()
        total = 0
        if log.last_seq:
            await self._api.post("/devices/me/inbox/ack", {"up_to_seq": log.last_seq})
        while True:
            body = await self._api.get(
                "/devices/me/inbox", params={"after": log.last_seq, "limit": limit}
            )
            entries = body["envelopes"] if isinstance(body, dict) else body
            if not entries:
                break
            top = await self._ingest(entries)
            await self._api.post("/devices/me/inbox/ack", {"up_to_seq": top})
            total += len(entries)
        self._caught_up.set()
        await self._maybe_refill()
        return total

    async def _maybe_refill(self) -> None:
        if not self._prekey_check:
            return
        self._prekey_check = False
        try:
            await self.refill_prekeys()
        except SdkError as exc:
            logger.warning("Prekey refill failed: %s", exc.code)
            self._prekey_check = True

    # -- receiving: the relay loop --------------------------------------------

    async def run_receiver(self) -> None:
        """Receive until cancelled: the relay socket, else the REST inbox.

        Reconnects with jittered exponential backoff. Ends by raising
        :class:`DeviceRevokedError` when the device is revoked, and
        :class:`RelayClosedError` (4409) when another process of this device
        took over the relay.
        """
        backoff = 0.5
        rest_until = 0.0
        while True:
            if time.monotonic() < rest_until:
                await self._poll_safely()
                await asyncio.sleep(self.poll_interval)
                continue
            try:
                relay = await RelayConnection.open(
                    self.profile.server_url, await self._token()
                )
            except RelayUnavailableError:
                logger.info("The relay is unavailable; polling the inbox")
                rest_until = time.monotonic() + REST_ONLY_PERIOD
                continue
            except UnauthorizedError:
                await self._token(True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except TransportError:
                await self._poll_safely()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue

            backoff = 0.5
            self.connected = True
            try:
                await self._pump(relay)
            except UnauthorizedError:
                self._access_token = None
                self.profile.forget_token()
            except RelayClosedError as exc:
                if exc.close_code == 4409:
                    raise
                logger.info("Relay closed with %s; reconnecting", exc.close_code)
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            except ProtocolError as exc:
                logger.warning("Relay protocol error: %s", exc.code)
                await asyncio.sleep(backoff)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await relay.close()

    async def _poll_safely(self) -> None:
        try:
            await self.poll_inbox()
        except DeviceRevokedError:
            raise
        except (TransportError, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status in (401, 403):
                await self._token(True)
            logger.info("Inbox poll failed: %s", exc.code)

    async def _pump(self, relay: RelayConnection) -> None:
        async for frame in relay.frames():
            kind = frame["type"]
            if kind == "envelope":
                entry = frame.get("envelope")
                entry = entry if isinstance(entry, dict) else frame
                await relay.ack(await self._ingest([entry]))
            elif kind == "queue_empty":
                self._caught_up.set()
                await self._maybe_refill()
            elif kind == "devices_changed":
                self._room_devices.pop(str(frame.get("room_id")), None)
            elif kind == "error":
                logger.warning("Relay error frame: %s", frame.get("code"))
            elif kind == "hello":
                logger.info(
                    "Relay connected (last acked %s)", frame.get("last_acked_seq")
                )

    def start_receiving(self) -> None:
        """Start the receiver in the background (idempotent)."""
        if self._receiver is None or self._receiver.done():
            self._receiver = asyncio.get_running_loop().create_task(self.run_receiver())

    async def stop_receiving(self) -> None:
        """Stop the background receiver."""
        task, self._receiver = self._receiver, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SdkError):
                await task

    async def wait_caught_up(self, timeout: float | None = None) -> None:
        """Wait until the backlog queued on the server has been stored."""
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    async def messages(
        self, *, room_id: str | None = None, include_outgoing: bool = True
    ) -> AsyncGenerator[Message, None]:
        """Yield received messages in order, waiting for new ones.

        Starts the receiver. A message is marked handled when the next one
        is requested, so one interrupted mid-way is offered again next time.
        Raises what ended the receiver (e.g. :class:`DeviceRevokedError`).
        """
        self.start_receiving()
        log = self._message_log()
        after = 0
        while True:
            self._new_messages.clear()
            batch = log.pending(after=after)
            for message in batch:
                after = message.local_id
                wanted = (room_id is None or message.room_id == room_id) and (
                    include_outgoing or not message.outgoing
                )
                if wanted:
                    yield message
                log.mark_handled(message.local_id)
            if batch:
                continue
            await self._wait_for_news()

    async def _wait_for_news(self) -> None:
        receiver = self._receiver
        news = asyncio.ensure_future(self._new_messages.wait())
        waiting: set[asyncio.Future[Any]] = {news}
        if receiver is not None:
            waiting.add(receiver)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            news.cancel()
        if receiver is not None and receiver.done() and not receiver.cancelled():
            error = receiver.exception()
            if error is not None:
                raise error

    def stored_counts(self) -> tuple[int, int]:
        """Return (stored, pending) counts of the local message log."""
        return self._message_log().counts()

    def recent_messages(self, limit: int = 20) -> list[Message]:
        """Return the newest stored messages, oldest first."""
        return self._message_log().recent(limit=limit)
