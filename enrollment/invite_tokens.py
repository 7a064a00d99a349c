"""Invite tokens: ``av1.<tenant id>.<secret>``, stored only as a keyed hash.

- The secret is 32 random bytes in URL-safe base64 (43 characters).
- The server keeps ``BLAKE2b-256(key=INVITE_PEPPER, person="av-invite-v1",
  tenant id || secret)``; binding the tenant id means a secret moved into
  another tenant's token matches nothing.
- The first 16 hex digits of that hash are a lookup index; the whole hash
  is then compared in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import uuid

from django.conf import settings

TOKEN_PREFIX = "av1"  # noqa: S105 (a format marker, not a secret)
LOOKUP_CHARS = 16
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")
_PERSON = b"av-invite-v1"


@dataclasses.dataclass(frozen=True, repr=False)
class InviteToken:
    """A parsed invite token; its repr never shows the secret."""

    tenant_id: uuid.UUID
    secret: str

    def __repr__(self) -> str:
        return f"InviteToken(tenant_id={self.tenant_id}, secret=<redacted>)"

    @property
    def text(self) -> str:
        """Return the token as the invitee receives it."""
        return f"{TOKEN_PREFIX}.{self.tenant_id}.{self.secret}"


def new_invite_token(tenant_id: uuid.UUID) -> InviteToken:
    """Return a fresh random token for ``tenant_id``."""
    return InviteToken(tenant_id=tenant_id, secret=secrets.token_urlsafe(32))


def parse_invite_token(text: object) -> InviteToken | None:
    """Return the parsed token, or None when it is not well formed."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    prefix, _, rest = text.partition(".")
    tenant, _, secret = rest.partition(".")
    if prefix != TOKEN_PREFIX or not _SECRET.match(secret):
        return None
    try:
        tenant_id = uuid.UUID(tenant)
    except ValueError:
        return None
    if str(tenant_id) != tenant:
        return None
    return InviteToken(tenant_id=tenant_id, secret=secret)


def _pepper() -> bytes:
    pepper = str(settings.AGENTVAULT["INVITE_PEPPER"]).encode()
    # BLAKE2b keys are at most 64 bytes; a longer pepper is hashed down.
    if len(pepper) > 64:
        pepper = hashlib.blake2b(pepper, digest_size=64).digest()
    return pepper


def hash_invite_secret(token: InviteToken) -> str:
    """Return the keyed BLAKE2b-256 the server stores for ``token``."""
    digest = hashlib.blake2b(
        token.tenant_id.bytes + token.secret.encode("ascii"),
        digest_size=32,
        key=_pepper(),
        person=_PERSON,
    )
    return digest.hexdigest()


def lookup_of(secret_hash: str) -> str:
    """Return the index part of a stored invite hash."""
    return secret_hash[:LOOKUP_CHARS]


def invite_hash_matches(stored: str, computed: str) -> bool:
    """Compare a stored and a computed invite hash in constant time."""
    return hmac.compare_digest(stored.encode("ascii"), computed.encode("ascii"))
