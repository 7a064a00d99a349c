"""Every write of enrollment: invites, devices, challenges and prekeys.

Each ``do_*`` function runs in ``transaction.atomic`` inside the tenant
scope of the object it changes, takes who acts as the ``acting`` keyword
(a ``Principal``, a ``Member`` or an ``(kind, id)`` pair such as
``("operator", "manage.py")``) and writes one audit event per state change.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

import audit
from agentvault.auth.principal import Principal
from agentvault.auth.tokens import get_registry
from agentvault.errors import ForbiddenError, NotFoundError
from agentvault.observability import metrics
from enrollment import crypto
from enrollment.conf import option
from enrollment.directory import get_device_tenant, members_share_room
from enrollment.errors import (
    BadSignatureError,
    ChallengeFailedError,
    DeviceRevokedError,
    IdentityKeyInUseError,
    InvalidInviteError,
    InvalidKeyError,
    InvalidProofError,
    InviteLifetimeError,
    InviteNotOpenError,
    NoSharedRoomError,
    PrekeyIdConflictError,
    PrekeyIdReusedError,
    PrekeyLimitError,
)
from enrollment.invite_tokens import (
    InviteToken,
    hash_invite_secret,
    invite_hash_matches,
    lookup_of,
    new_invite_token,
    parse_invite_token,
)
from enrollment.models import (
    ClaimedPrekeyId,
    Device,
    DeviceChallenge,
    Invite,
    OneTimePrekey,
    SignedPrekey,
)
from enrollment.signals import device_approved, device_revoked
from tenants.models import Member, Tenant
from tenants.scope import current_tenant_id, tenant_scope

logger = logging.getLogger(__name__)

ANONYMOUS = ("anonymous", "")
# Outstanding challenges kept per device; older ones are dropped.
MAX_OPEN_CHALLENGES = 5


def _in_other_tenant(tenant_id: uuid.UUID) -> bool:
    """Return whether the caller already acts in another tenant's scope.

    The unauthenticated endpoints may still carry a valid bearer token of
    some tenant, whose scope the middleware opened; acting on another
    tenant from there is refused like any other bad request.
    """
    current = current_tenant_id()
    return current is not None and current != tenant_id


def _acting_member(acting: Any) -> Member | None:
    if isinstance(acting, Principal):
        return acting.member
    if isinstance(acting, Member):
        return acting
    return None


def check_may_manage(acting: Any, member: Member) -> None:
    """Refuse an admin act on ``member`` that the acting admin may not do.

    Operator commands (no acting member) may act on anyone; see
    ``Member.may_manage`` for admins.
    """
    admin = _acting_member(acting)
    if admin is not None and not admin.may_manage(member):
        raise ForbiddenError()


# --- Invites -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class CreatedInvite:
    """A new invite and its token, which exists only in this object."""

    invite: Invite
    token: str

    def __repr__(self) -> str:
        return f"CreatedInvite(invite={self.invite.pk}, token=<redacted>)"


def _lifetime(seconds: int | None) -> datetime.timedelta:
    longest = int(option("INVITE_MAX_LIFETIME"))
    value = int(option("INVITE_LIFETIME")) if seconds is None else seconds
    if not 60 <= value <= longest:
        raise InviteLifetimeError(max_hours=longest // 3600)
    return datetime.timedelta(seconds=value)


@sensitive_variables("token")
def do_create_invite(
    *,
    tenant_id: uuid.UUID,
    acting: Any,
    member: Member | None = None,
    name: str = "",
    kind: str = "",
    role: str = "",
    lifetime: int | None = None,
) -> CreatedInvite:
    """Create an invite for a new member, or another device of ``member``.

    - Only an owner admin may invite a new admin.
    - The token is returned once and only its keyed hash is stored.
    """
    expires_in = _lifetime(lifetime)
    if member is None:
        kind = kind or Member.Kind.HUMAN
        role = role or (Member.Role.AGENT if kind == Member.Kind.AGENT else "member")
    inviter = _acting_member(acting)
    new_admin = member is None and role in Member.ADMIN_ROLES
    if new_admin and inviter is not None and inviter.role != Member.Role.OWNER_ADMIN:
        raise ForbiddenError()
    if member is not None:
        check_may_manage(acting, member)

    token = new_invite_token(tenant_id)
    secret_hash = hash_invite_secret(token)
    with tenant_scope(tenant_id):
        invite = Invite.objects.create(
            tenant_id=tenant_id,
            lookup=lookup_of(secret_hash),
            secret_hash=secret_hash,
            member=member,
            member_name="" if member else name,
            member_kind="" if member else kind,
            member_role="" if member else role,
            created_by=inviter,
            expires_at=timezone.now() + expires_in,
        )
        audit.record(
            "invite.created",
            actor=acting,
            target=invite,
            details={
                "member_id": str(member.pk) if member else None,
                "kind": invite.member_kind or None,
                "role": invite.member_role or None,
                "expires_at": invite.expires_at.isoformat(),
            },
        )

    logger.info("Created invite %s in tenant %s", invite.pk, tenant_id)
    return CreatedInvite(invite=invite, token=token.text)


def do_revoke_invite(invite: Invite, *, acting: Any) -> Invite:
    """Revoke an open invite; revoking it again changes nothing."""
    with tenant_scope(invite.tenant_id):
        invite = Invite.objects.select_for_update().get(pk=invite.pk)
        if invite.revoked_at is not None:
            return invite
        if invite.used_at is not None:
            raise InviteNotOpenError()

        invite.revoked_at = timezone.now()
        invite.save(update_fields=["revoked_at"])
        audit.record("invite.revoked", actor=acting, target=invite)

    logger.info("Revoked invite %s", invite.pk)
    return invite


# --- Enrollment ----------------------------------------------------------------


class _Refused(Exception):
    """An enrollment refusal, recorded before the scope ends."""

    def __init__(self, reason: str, error: type[Exception] = InvalidInviteError):
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _redeem(
    token: InviteToken, *, identity_key: bytes, device_name: str, now: datetime.datetime
) -> tuple[Invite, Device]:
    """Consume the invite and create the pending device (in the tenant scope).

    - The invite row is locked, so two devices racing for one invite
      serialise and the second finds it used.
    - Lookup is by a prefix of the keyed hash; the full hash is compared in
      constant time.
    """
    computed = hash_invite_secret(token)
    invite = (
        Invite.objects.select_for_update(of=("self",))
        .select_related("member")
        .filter(tenant_id=token.tenant_id, lookup=lookup_of(computed))
        .first()
    )
    if invite is None or not invite_hash_matches(invite.secret_hash, computed):
        raise _Refused("unknown")
    if invite.used_at is not None:
        raise _Refused("used")
    if invite.revoked_at is not None:
        raise _Refused("revoked")
    if invite.expires_at <= now:
        raise _Refused("expired")
    if invite.member is not None and not invite.member.is_active:
        raise _Refused("member_inactive")
    if Device.objects.filter(identity_key=identity_key).exists():
        raise _Refused("identity_key_in_use", IdentityKeyInUseError)

    member = invite.member
    try:
        with transaction.atomic():
            if member is None:
                member = Member.objects.create(
                    tenant_id=token.tenant_id,
                    name=invite.member_name,
                    kind=invite.member_kind,
                    role=invite.member_role,
                )
            device = Device.objects.create(
                tenant_id=token.tenant_id,
                member=member,
                name=device_name,
                identity_key=identity_key,
                fingerprint=crypto.fingerprint(identity_key),
                status=Device.Status.PENDING,
            )
    except IntegrityError:
        # Another enrollment with the same key committed in between.
        raise _Refused("identity_key_in_use", IdentityKeyInUseError) from None

    invite.used_at = now
    invite.device = device
    invite.save(update_fields=["used_at", "device"])
    return invite, device


@sensitive_variables("invite_token", "token")
def do_enroll_device(
    *, invite_token: str, identity_key: bytes, device_name: str, proof: bytes
) -> Device:
    """Redeem an invite for a new pending device of the invited member.

    Every refusal of a known tenant is audited as ``enrollment.refused``
    with its reason, and answered with one error (``invalid_invite`` for
    any invite problem), so the answer does not tell an unknown invite from
    a used, expired, revoked or foreign one.
    """
    token = parse_invite_token(invite_token)
    if token is None or not Tenant.objects.filter(pk=token.tenant_id).exists():
        logger.info("Refused an enrollment: malformed invite or unknown tenant")
        metrics.ENROLLMENT_ATTEMPTS.labels("unknown").inc()
        raise InvalidInviteError()
    if _in_other_tenant(token.tenant_id):
        raise InvalidInviteError()

    with tenant_scope(token.tenant_id):
        try:
            if not crypto.is_valid_identity_key(identity_key):
                raise _Refused("invalid_key", InvalidKeyError)
            message = crypto.enrollment_proof_message(invite_token)
            if not crypto.verify_signature(identity_key, message, proof):
                raise _Refused("invalid_proof", InvalidProofError)
            invite, device = _redeem(
                token,
                identity_key=identity_key,
                device_name=device_name,
                now=timezone.now(),
            )
        except _Refused as refused:
            audit.record(
                "enrollment.refused",
                actor=ANONYMOUS,
                details={"reason": refused.reason},
            )
            logger.info(
                "Refused an enrollment in tenant %s: %s", token.tenant_id, refused
            )
            error: type[Exception] | None = refused.error
            reason = refused.reason
        else:
            error = None
            audit.record(
                "device.enrolled",
                actor=("device", str(device.pk)),
                target=device,
                details={
                    "invite_id": str(invite.pk),
                    "member_id": str(device.member_id),
                    "new_member": invite.member_id is None,
                },
            )

    if error is not None:
        metrics.ENROLLMENT_ATTEMPTS.labels(reason).inc()
        raise error()
    metrics.ENROLLMENT_ATTEMPTS.labels("enrolled").inc()
    logger.info("Enrolled device %s in tenant %s", device.pk, device.tenant_id)
    return device


def do_prune_expired(*, now: datetime.datetime) -> str:
    """Delete expired invites and device challenges of the current tenant.

    Runs in the caller's tenant scope (``manage.py prune``). An invite past
    its expiry can no longer be redeemed, used or not; the audit trail keeps
    its id. Returns a short summary of what was deleted.
    """
    invites, _ = Invite.objects.filter(expires_at__lte=now).delete()
    challenges, _ = DeviceChallenge.objects.filter(expires_at__lte=now).delete()
    if invites or challenges:
        logger.info("Pruned %d invites and %d challenges", invites, challenges)
    return f"{invites} expired invites and {challenges} expired challenges deleted"


# --- Approval and revocation ---------------------------------------------------


def _locked(device: Device) -> Device:
    """Reload ``device`` with its row locked (and its member, unlocked)."""
    return (
        Device.objects.select_for_update(of=("self",))
        .select_related("member")
        .get(pk=device.pk)
    )


def _source(acting: Any, device: Device) -> str:
    """Return who asked, as a metric label: self, api, console or command."""
    if isinstance(acting, Principal):
        return "self" if acting.device_id == device.pk else "api"
    if isinstance(acting, Member):
        return "console"
    return "command"


def do_approve_device(device: Device, *, acting: Any) -> Device:
    """Activate a pending device after an admin compared its fingerprint.

    Approving an active device again changes nothing; a revoked device
    cannot come back.
    """
    with tenant_scope(device.tenant_id):
        device = _locked(device)
        check_may_manage(acting, device.member)
        if device.status == Device.Status.ACTIVE:
            return device
        if device.status == Device.Status.REVOKED:
            raise DeviceRevokedError()

        device.status = Device.Status.ACTIVE
        device.approved_at = timezone.now()
        device.save(update_fields=["status", "approved_at"])
        audit.record(
            "device.approved",
            actor=acting,
            target=device,
            details={"member_id": str(device.member_id)},
        )
        device_approved.send(sender=Device, device=device)
        source = _source(acting, device)
        transaction.on_commit(lambda: metrics.DEVICE_APPROVALS.labels(source).inc())

    logger.info("Approved device %s", device.pk)
    return device


def do_revoke_device(device: Device, *, acting: Any) -> Device:
    """Revoke a device: no more tokens, its prekeys and challenges deleted.

    ``device_revoked`` is sent inside the transaction, so receivers (the
    relay's queue clean-up) commit or roll back with the revocation.
    Revoking twice changes nothing.
    """
    with tenant_scope(device.tenant_id):
        device = _locked(device)
        revoking_itself = (
            isinstance(acting, Principal) and acting.device_id == device.pk
        )
        if not revoking_itself:
            check_may_manage(acting, device.member)
        if device.status == Device.Status.REVOKED:
            return device

        previous = device.status
        device.status = Device.Status.REVOKED
        device.revoked_at = timezone.now()
        device.save(update_fields=["status", "revoked_at"])
        one_time, _ = OneTimePrekey.objects.filter(device=device).delete()
        SignedPrekey.objects.filter(device=device).delete()
        DeviceChallenge.objects.filter(device=device).delete()
        audit.record(
            "device.revoked",
            actor=acting,
            target=device,
            details={
                "member_id": str(device.member_id),
                "previous_status": previous,
                "one_time_prekeys_deleted": one_time,
            },
        )
        device_revoked.send(sender=Device, device=device)
        source = _source(acting, device)
        transaction.on_commit(lambda: metrics.REVOCATIONS.labels(source).inc())

    logger.info("Revoked device %s", device.pk)
    return device


# --- Device authentication -----------------------------------------------------


def _digest(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def do_issue_challenge(device_id: uuid.UUID) -> bytes:
    """Return a fresh single-use challenge for ``device_id``.

    An unknown or revoked device gets a random challenge that is stored
    nowhere, so the answer does not reveal whether the device exists.
    """
    challenge = secrets.token_bytes(crypto.CHALLENGE_BYTES)
    tenant_id = get_device_tenant(device_id)
    if tenant_id is None or _in_other_tenant(tenant_id):
        return challenge

    now = timezone.now()
    with tenant_scope(tenant_id):
        device = Device.objects.filter(pk=device_id).first()
        if device is None or device.status == Device.Status.REVOKED:
            return challenge
        stale = DeviceChallenge.objects.filter(device=device)
        keep = stale.filter(expires_at__gt=now).order_by("-id")
        keep_ids = list(keep.values_list("id", flat=True)[: MAX_OPEN_CHALLENGES - 1])
        stale.exclude(id__in=keep_ids).delete()
        DeviceChallenge.objects.create(
            tenant_id=tenant_id,
            device=device,
            digest=_digest(challenge),
            expires_at=now + datetime.timedelta(seconds=option("CHALLENGE_LIFETIME")),
        )
    return challenge


def _consume_challenge(device_id: uuid.UUID, challenge: bytes) -> bool:
    """Delete the challenge if it is open; return whether it was.

    A single ``DELETE``: of two requests racing with one challenge, the
    second waits for the first's row lock and then deletes nothing. Expiry is
    judged at the moment of the check, not at the start of the transaction
    (which ``now()`` would give).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM enrollment_devicechallenge "
            "WHERE device_id = %s AND digest = %s AND expires_at > %s "
            "RETURNING id",
            [device_id, _digest(challenge), timezone.now()],
        )
        return cursor.fetchone() is not None


@sensitive_variables("access_token")
def do_issue_device_token(
    device_id: uuid.UUID, *, challenge: bytes, signature: bytes
) -> tuple[str, int]:
    """Exchange a signed challenge for an access token of ``device_id``.

    The signature is the identity key's over ``crypto.auth_challenge_message``
    (challenge, device id and audience). Unknown device, used, expired or
    foreign challenge, bad signature and revoked device all get the same
    ``challenge_failed``. Pending devices get a token: it lets them read
    their own status and nothing else.
    """
    tenant_id = get_device_tenant(device_id)
    if tenant_id is None or _in_other_tenant(tenant_id):
        raise ChallengeFailedError()

    audience = settings.AGENTVAULT_AUTH["AUDIENCE"]
    refusal = None
    with tenant_scope(tenant_id):
        consumed = _consume_challenge(device_id, challenge)
        device = Device.objects.select_related("member").filter(pk=device_id).first()
        if device is None:
            raise ChallengeFailedError()
        message = crypto.auth_challenge_message(challenge, device.pk, audience)
        if not consumed:
            refusal = "challenge"
        elif device.status == Device.Status.REVOKED:
            refusal = "revoked"
        elif not device.member.is_active:
            refusal = "member_inactive"
        elif not crypto.verify_signature(
            bytes(device.identity_key), message, signature
        ):
            refusal = "signature"

        if refusal is not None:
            audit.record(
                "device.token_refused",
                actor=ANONYMOUS,
                target=device,
                details={"reason": refusal},
            )
        else:
            access_token, expires_in = get_registry().builtin.issue(
                device_id=device.pk, member_id=device.member_id, tenant_id=tenant_id
            )
            device.last_seen_at = timezone.now()
            device.save(update_fields=["last_seen_at"])
            audit.record(
                "device.token_issued",
                actor=("device", str(device.pk)),
                target=device,
                details={"status": device.status},
            )

    if refusal is not None:
        logger.info("Refused a token for device %s: %s", device_id, refusal)
        raise ChallengeFailedError()
    metrics.TOKENS_ISSUED.inc()
    logger.info("Issued a token for device %s", device_id)
    return access_token, expires_in


# --- Prekey directory ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SignedPrekeyUpload:
    """A signed prekey as uploaded: id, X25519 public key, signature."""

    key_id: int
    public_key: bytes
    signature: bytes


@dataclasses.dataclass(frozen=True)
class OneTimePrekeyUpload:
    """A one-time prekey as uploaded: id and X25519 public key."""

    key_id: int
    public_key: bytes


def _store_signed_prekey(device: Device, upload: SignedPrekeyUpload) -> None:
    message = crypto.signed_prekey_message(upload.key_id, upload.public_key)
    if not crypto.verify_signature(
        bytes(device.identity_key), message, upload.signature
    ):
        raise BadSignatureError()
    current = SignedPrekey.objects.filter(device=device).first()
    if current is not None and current.key_id == upload.key_id:
        if bytes(current.public_key) != upload.public_key:
            raise PrekeyIdConflictError(fields={"signed_prekey": [upload.key_id]})
        return
    SignedPrekey.objects.update_or_create(
        device=device,
        defaults={
            "tenant_id": device.tenant_id,
            "key_id": upload.key_id,
            "public_key": upload.public_key,
            "signature": upload.signature,
        },
    )


def do_upload_prekeys(
    device: Device,
    *,
    signed_prekey: SignedPrekeyUpload | None,
    one_time_prekeys: list[OneTimePrekeyUpload],
) -> int:
    """Store a device's signed prekey and new one-time prekeys; return the count.

    - The signed prekey's signature must verify against the identity key.
    - A one-time id handed out before is refused (``prekey_id_reused``); an
      id stored with another key is a conflict; the same id and key again
      is accepted and stored once.
    - Nothing is stored unless the whole upload is accepted.
    """
    limit = int(option("PREKEYS_STORED"))
    with tenant_scope(device.tenant_id):
        # Uploads of one device are serialised on its row.
        device = _locked(device)
        if signed_prekey is not None:
            _store_signed_prekey(device, signed_prekey)

        ids = [prekey.key_id for prekey in one_time_prekeys]
        reused = sorted(
            ClaimedPrekeyId.objects.filter(device=device, key_id__in=ids).values_list(
                "key_id", flat=True
            )
        )
        if reused:
            raise PrekeyIdReusedError(fields={"one_time_prekeys": reused})
        stored = {
            key_id: bytes(public_key)
            for key_id, public_key in OneTimePrekey.objects.filter(
                device=device, key_id__in=ids
            ).values_list("key_id", "public_key")
        }
        conflicts = sorted(
            p.key_id
            for p in one_time_prekeys
            if stored.get(p.key_id, p.public_key) != p.public_key
        )
        if conflicts:
            raise PrekeyIdConflictError(fields={"one_time_prekeys": conflicts})

        fresh = [p for p in one_time_prekeys if p.key_id not in stored]
        count = OneTimePrekey.objects.filter(device=device).count()
        if count + len(fresh) > limit:
            raise PrekeyLimitError(limit=limit)
        OneTimePrekey.objects.bulk_create(
            OneTimePrekey(
                tenant_id=device.tenant_id,
                device=device,
                key_id=p.key_id,
                public_key=p.public_key,
            )
            for p in fresh
        )

    logger.info("Device %s uploaded %d one-time prekeys", device.pk, len(fresh))
    return count + len(fresh)


def get_prekey_status(device: Device) -> dict[str, Any]:
    """Return how many one-time prekeys a device has left, and its SPK id."""
    signed = SignedPrekey.objects.filter(device=device).values_list("key_id", flat=True)
    return {
        "one_time_prekeys": OneTimePrekey.objects.filter(device=device).count(),
        "signed_prekey_id": signed.first(),
    }


def access_bundle_devices(caller: Principal, member_id: uuid.UUID) -> list[Device]:
    """Return the devices whose bundles ``caller`` may claim from a member.

    - The member must be active in the caller's tenant (else ``not_found``).
    - Another member must share a room with the caller; a member's own
      other devices are always reachable.
    - Active devices with a signed prekey only, the calling device excluded.
    """
    target = Member.objects.active().filter(pk=member_id).first()
    if target is None:
        raise NotFoundError()
    if target.pk != caller.member_id and not members_share_room(
        caller.tenant_id, caller.member_id, target.pk
    ):
        raise NoSharedRoomError()
    devices = Device.objects.active().filter(member=target, signed_prekey__isnull=False)
    if caller.device_id is not None:
        devices = devices.exclude(pk=caller.device_id)
    return list(devices.select_related("signed_prekey").order_by("created_at", "id"))


def _claim_one_time_prekey(device: Device) -> tuple[int, bytes] | None:
    """Hand out the oldest one-time prekey of ``device``, exactly once.

    ``FOR UPDATE SKIP LOCKED`` lets concurrent claims each take a different
    row instead of queueing behind one; the tombstone makes the id unusable
    for future uploads in the same transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM enrollment_onetimeprekey WHERE id = ("
            "  SELECT id FROM enrollment_onetimeprekey WHERE device_id = %s"
            "  ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ") RETURNING key_id, public_key",
            [device.pk],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    key_id, public_key = int(row[0]), bytes(row[1])
    ClaimedPrekeyId.objects.create(
        tenant_id=device.tenant_id, device=device, key_id=key_id
    )
    return key_id, public_key


def do_claim_prekey_bundles(devices: list[Device]) -> list[dict[str, Any]]:
    """Return one bundle per device, each with a one-time prekey if any left."""
    bundles = []
    for device in devices:
        with tenant_scope(device.tenant_id):
            claimed = _claim_one_time_prekey(device)
        signed = device.signed_prekey
        bundles.append(
            {
                "device": device,
                "signed_prekey": signed,
                "one_time_prekey": claimed,
            }
        )
    return bundles
