"""Bearer-token verification shared by the REST API and the WebSocket relay.

A token is dispatched on its exact ``iss`` (read unverified, only to choose)
to one configured verifier; the verifier brings its own algorithm list and
keys, so nothing in the token decides how it is checked. Two kinds exist:

- ``BuiltinIssuer``: EdDSA tokens the server signs for devices after a
  challenge. Offline; the first configured key signs, every key verifies, so
  rotation is a configuration change.
- ``OidcVerifier``: RS256 tokens from an external issuer (Clerk or any JWKS
  issuer), with an ``azp`` allow-list and a cached key set that survives a
  failing JWKS endpoint for a bounded time.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

logger = logging.getLogger(__name__)

REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub"]


class TokenError(Exception):
    """A bearer token was refused; ``code`` says why in one stable word."""

    def __init__(self, code: str = "invalid_token") -> None:
        super().__init__(code)
        self.code = code


@dataclasses.dataclass(frozen=True)
class VerifiedToken:
    """The verified claims of a token and the kind of issuer that signed it."""

    issuer: str
    subject: str
    kind: str  # "device" (built-in issuer) or "oidc"
    claims: Mapping[str, Any]
    expires_at: int

    @property
    def tenant_id(self) -> uuid.UUID | None:
        """Return the tenant named by a built-in token (signed by this server)."""
        if self.kind != "device":
            return None
        return uuid.UUID(self.claims["tid"])

    def __repr__(self) -> str:
        return f"VerifiedToken(kind={self.kind!r}, subject={self.subject!r})"


class TokenVerifier(Protocol):
    """Verify tokens of one exact issuer."""

    issuer: str

    def verify(self, token: str) -> VerifiedToken:
        """Return the verified token or raise ``TokenError``."""
        ...


def _decode_error(exc: jwt.PyJWTError) -> TokenError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return TokenError("token_expired")
    return TokenError("invalid_token")


# --- Built-in issuer ----------------------------------------------------------


def _private_key(encoded: str) -> Ed25519PrivateKey:
    try:
        seed = base64.b64decode(encoded, validate=True)
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError:
        raise ImproperlyConfigured(
            "AV_SIGNING_KEY (and each AV_SIGNING_KEY_FALLBACKS entry) must be the "
            "base64 of a 32-byte Ed25519 seed."
        ) from None


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the ``kid`` of a signing key: a short hash of its public bytes."""
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[:16]


class BuiltinIssuer:
    """Sign and verify the server's own EdDSA device tokens."""

    algorithms = ["EdDSA"]

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: list[str],
        lifetime: int,
        leeway: int,
    ) -> None:
        if not keys:
            raise ImproperlyConfigured("Set AV_SIGNING_KEY: no token signing key.")
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self.leeway = leeway
        self._signing_key = _private_key(keys[0])
        self._public_keys = {
            key_id(private.public_key()): private.public_key()
            for private in map(_private_key, keys)
        }
        self._signing_kid = key_id(self._signing_key.public_key())

    def __repr__(self) -> str:
        return f"BuiltinIssuer(issuer={self.issuer!r}, kid={self._signing_kid!r})"

    def issue(
        self,
        *,
        device_id: uuid.UUID,
        member_id: uuid.UUID,
        tenant_id: uuid.UUID,
        now: int | None = None,
    ) -> tuple[str, int]:
        """Return a signed device token and its lifetime in seconds."""
        issued = int(time.time()) if now is None else now
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(device_id),
            "tid": str(tenant_id),
            "mid": str(member_id),
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(
            claims,
            self._signing_key,
            algorithm="EdDSA",
            headers={"kid": self._signing_kid},
        )
        return token, self.lifetime

    def verify(self, token: str) -> VerifiedToken:
        """Verify a built-in token: EdDSA only, known ``kid``, exact claims."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError() from None
        public_key = self._public_keys.get(header.get("kid", ""))
        if public_key is None:
            raise TokenError()

        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": [*REQUIRED_CLAIMS, "aud", "tid", "mid"]},
            )
            for claim in ("sub", "tid", "mid"):
                uuid.UUID(claims[claim])
        except jwt.PyJWTError as exc:
            raise _decode_error(exc) from None
        except (ValueError, TypeError, AttributeError):
            raise TokenError() from None

        return VerifiedToken(
            issuer=self.issuer,
            subject=claims["sub"],
            kind="device",
            claims=claims,
            expires_at=int(claims["exp"]),
        )


# --- External OIDC issuers ----------------------------------------------------


Fetcher = Callable[[str, float], bytes]


def _http_fetch(url: str, timeout: float) -> bytes:
    # The URL comes from settings (AV_OIDC_ISSUERS, https only), never a token.
    headers = {"Accept": "application/json"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(1_000_000)
    return body


class JwksCache:
    """A JWKS key set kept fresh, with a last-known-good copy.

    - Within ``lifespan`` of the last successful fetch the cached set is used.
    - After that a fetch is tried; if it fails, the last good set keeps
      verifying until ``stale_for`` seconds after that success, then nothing
      verifies until a fetch succeeds again.
    - An unknown ``kid`` forces a refetch at most once per ``cooldown``, so a
      stream of made-up key ids cannot hammer the issuer.
    """

    def __init__(
        self,
        url: str,
        *,
        lifespan: float,
        stale_for: float,
        cooldown: float,
        timeout: float,
        fetch: Fetcher = _http_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.lifespan = lifespan
        self.stale_for = stale_for
        self.cooldown = cooldown
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None

    def _refresh(self, now: float) -> None:
        self._last_attempt = now
        try:
            document = json.loads(self._fetch(self.url, self.timeout))
            key_set = jwt.PyJWKSet.from_dict(document)
        except Exception:
            logger.warning("JWKS fetch failed for %s", self.url, exc_info=True)
            return
        self._keys = {
            key.key_id: key.key
            for key in key_set.keys
            if key.key_id and key.algorithm_name in ("RS256", None)
        }
        self._fetched_at = now

    def get_key(self, kid: str) -> Any:
        """Return the verification key ``kid`` or raise ``TokenError``."""
        with self._lock:
            now = self._clock()
            fresh = (
                self._fetched_at is not None and now - self._fetched_at < self.lifespan
            )
            if not fresh and self._may_attempt(now):
                self._refresh(now)
            elif kid not in self._keys and self._may_attempt(now):
                self._refresh(now)

            usable = (
                self._fetched_at is not None and now - self._fetched_at < self.stale_for
            )
            key = self._keys.get(kid) if usable else None
        if key is None:
            raise TokenError()
        return key

    def _may_attempt(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self.cooldown


class OidcVerifier:
    """Verify RS256 tokens of one external OpenID Connect issuer."""

    algorithms = ["RS256"]

    def __init__(
        self,
        *,
        issuer: str,
        jwks: JwksCache,
        authorized_parties: list[str],
        audience: str | None,
        leeway: int,
    ) -> None:
        self.issuer = issuer
        self.jwks = jwks
        self.authorized_parties = authorized_parties
        self.audience = audience
        self.leeway = leeway

    def __repr__(self) -> str:
        return f"OidcVerifier(issuer={self.issuer!r})"

    def verify(self, token: str) -> VerifiedToken:
        """Verify an external token: RS256 only, exact issuer, allowed ``azp``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError() from None
        if header.get("alg") not in self.algorithms:
            raise TokenError()
        key = self.jwks.get_key(str(header.get("kid", "")))

        options: Any = {"require": list(REQUIRED_CLAIMS)}
        if self.audience is None:
            options["verify_aud"] = False
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options=options,
            )
        except jwt.PyJWTError as exc:
            raise _decode_error(exc) from None

        # PyJWT does not check azp; an allow-list, when configured, must hold it.
        if self.authorized_parties and claims.get("azp") not in self.authorized_parties:
            raise TokenError()
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise TokenError()

        return VerifiedToken(
            issuer=self.issuer,
            subject=claims["sub"],
            kind="oidc",
            claims=claims,
            expires_at=int(claims["exp"]),
        )


# --- Registry -----------------------------------------------------------------


class VerifierRegistry:
    """The configured verifiers, keyed by their exact issuer string."""

    def __init__(self, builtin: BuiltinIssuer, others: list[TokenVerifier]) -> None:
        self.builtin = builtin
        self._by_issuer: dict[str, TokenVerifier] = {builtin.issuer: builtin}
        for verifier in others:
            if verifier.issuer in self._by_issuer:
                raise ImproperlyConfigured(
                    f"Token issuer {verifier.issuer!r} is configured twice."
                )
            self._by_issuer[verifier.issuer] = verifier

    def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` with the verifier of its exact issuer."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError() from None
        issuer = unverified.get("iss")
        verifier = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise TokenError()
        return verifier.verify(token)


def build_registry(config: Mapping[str, Any]) -> VerifierRegistry:
    """Build the verifier registry from an ``AGENTVAULT_AUTH``-shaped mapping."""
    builtin = BuiltinIssuer(
        issuer=config["ISSUER"],
        audience=config["AUDIENCE"],
        keys=list(config["SIGNING_KEYS"]),
        lifetime=int(config["TOKEN_LIFETIME"]),
        leeway=int(config["LEEWAY"]),
    )
    others: list[TokenVerifier] = []
    for entry in config.get("OIDC_ISSUERS", []):
        if not entry["jwks_url"].startswith(("https://", "http://127.0.0.1")):
            raise ImproperlyConfigured(
                f"The JWKS URL of issuer {entry['issuer']!r} must use https."
            )
        jwks = JwksCache(
            entry["jwks_url"],
            lifespan=float(entry.get("jwks_lifespan", config["JWKS_LIFESPAN"])),
            stale_for=float(entry.get("jwks_stale_for", config["JWKS_STALE_FOR"])),
            cooldown=float(entry.get("jwks_cooldown", config["JWKS_COOLDOWN"])),
            timeout=float(config["JWKS_TIMEOUT"]),
        )
        others.append(
            OidcVerifier(
                issuer=entry["issuer"],
                jwks=jwks,
                authorized_parties=list(entry.get("azp", [])),
                audience=entry.get("audience"),
                leeway=int(config["LEEWAY"]),
            )
        )
    return VerifierRegistry(builtin, others)


_registry: VerifierRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> VerifierRegistry:
    """Return the process-wide verifier registry, built on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = build_registry(settings.AGENTVAULT_AUTH)
        return _registry


@receiver(setting_changed)
def _reset_registry(*, setting: str, **kwargs: Any) -> None:
    global _registry
    if setting == "AGENTVAULT_AUTH":
        _registry = None


def verify_token(token: str) -> VerifiedToken:
    """Verify a bearer token against the configured issuers."""
    return get_registry().verify(token)
