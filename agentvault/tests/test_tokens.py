"""Bearer-token verification: the attacks every verifier must refuse."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentvault.auth.tokens import (
    BuiltinIssuer,
    JwksCache,
    OidcVerifier,
    TokenError,
    VerifierRegistry,
    key_id,
)
from tenants.models import Member, User
from tenants.scope import tenant_scope
from tests.support import TenantWorld

ISSUER = "agentvault-test"
SEED = base64.b64encode(b"\x01" * 32).decode()
OTHER_SEED = base64.b64encode(b"\x02" * 32).decode()


def builtin(keys: list[str] | None = None) -> BuiltinIssuer:
    return BuiltinIssuer(
        issuer=ISSUER,
        audience="agentvault",
        keys=keys or [SEED],
        lifetime=900,
        leeway=5,
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": "agentvault",
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "mid": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def signed(payload: dict[str, Any], seed: str = SEED) -> str:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed))
    return jwt.encode(
        payload, key, algorithm="EdDSA", headers={"kid": key_id(key.public_key())}
    )


def refuse(verifier: Any, token: str, code: str = "invalid_token") -> None:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    assert caught.value.code == code


# --- Built-in issuer ---------------------------------------------------------------


def test_a_token_it_issued_verifies() -> None:
    issuer = builtin()
    device, member, tenant = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    token, lifetime = issuer.issue(device_id=device, member_id=member, tenant_id=tenant)

    verified = issuer.verify(token)

    assert lifetime == 900
    assert verified.subject == str(device)
    assert verified.tenant_id == tenant
    assert verified.kind == "device"


def test_alg_none_is_refused() -> None:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "x"}).encode())
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode())
    token = f"{header.decode().rstrip('=')}.{body.decode().rstrip('=')}."
    refuse(builtin(), token)
    refuse(VerifierRegistry(builtin(), []), token)


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    issuer = builtin()
    public = (
        Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    kid = key_id(Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key())
    # PyJWT refuses to HMAC with a PEM key, so forge the HS256 MAC by hand.
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    refuse(issuer, f"{head}.{body}.{b64(mac)}")


@pytest.mark.parametrize("iss", [ISSUER[:-1], ISSUER + "x", ISSUER + "/", " " + ISSUER])
def test_an_issuer_that_is_a_prefix_or_extension_is_refused(iss: str) -> None:
    registry = VerifierRegistry(builtin(), [])
    refuse(registry, signed(claims(iss=iss)))
    refuse(builtin(), signed(claims(iss=iss)))


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "iss", "aud", "tid"])
def test_a_token_without_a_required_claim_is_refused(missing: str) -> None:
    refuse(builtin(), signed(claims(**{missing: None})))


def test_an_expired_token_is_refused() -> None:
    now = int(time.time())
    refuse(builtin(), signed(claims(iat=now - 1000, exp=now - 60)), "token_expired")


def test_a_token_not_yet_valid_is_refused() -> None:
    now = int(time.time())
    refuse(builtin(), signed(claims(nbf=now + 600)))


def test_a_token_issued_in_the_future_is_refused() -> None:
    now = int(time.time())
    refuse(builtin(), signed(claims(iat=now + 600, exp=now + 1200)))


def test_the_wrong_audience_is_refused() -> None:
    refuse(builtin(), signed(claims(aud="someone-else")))


def test_an_unknown_kid_is_refused() -> None:
    refuse(builtin(), signed(claims(), seed=OTHER_SEED))


def test_a_tampered_payload_is_refused() -> None:
    token = signed(claims())
    head, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["tid"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    refuse(builtin(), f"{head}.{forged}.{signature}")


def test_a_rotated_key_still_verifies_until_removed() -> None:
    old = builtin([SEED])
    token, _ = old.issue(
        device_id=uuid.uuid4(), member_id=uuid.uuid4(), tenant_id=uuid.uuid4()
    )

    assert builtin([OTHER_SEED, SEED]).verify(token).subject
    refuse(builtin([OTHER_SEED]), token)


def test_the_registry_refuses_an_unknown_issuer_and_garbage() -> None:
    registry = VerifierRegistry(builtin(), [])
    refuse(registry, "not-a-token")
    refuse(registry, signed(claims(iss="https://evil.example")))
    refuse(registry, signed(claims(iss=None)))


# --- External OIDC issuer -------------------------------------------------

OIDC_ISSUER = "https://clerk.example.test"


class FakeJwksServer:
    """A key set document served through the cache's fetch hook."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.failing = False
        self.fetches = 0

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        return key

    def fetch(self, url: str, timeout: float) -> bytes:
        self.fetches += 1
        if self.failing:
            raise OSError("JWKS endpoint down")
        jwks = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
            jwks.append(jwk)
        return json.dumps({"keys": jwks}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oidc(
    server: FakeJwksServer, clock: Clock, azp: list[str] | None = None
) -> OidcVerifier:
    cache = JwksCache(
        "https://clerk.example.test/.well-known/jwks.json",
        lifespan=300,
        stale_for=3600,
        cooldown=30,
        timeout=1,
        fetch=server.fetch,
        clock=clock,
    )
    return OidcVerifier(
        issuer=OIDC_ISSUER,
        jwks=cache,
        authorized_parties=azp if azp is not None else ["https://app.example.test"],
        audience=None,
        leeway=5,
    )


def rs256(key: rsa.RSAPrivateKey, kid: str, **overrides: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": OIDC_ISSUER,
        "sub": "user_123",
        "azp": "https://app.example.test",
        "iat": now,
        "exp": now + 300,
        "sid": "sess_1",
    }
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def test_an_oidc_token_verifies_with_the_published_key() -> None:
    server, clock = FakeJwksServer(), Clock()
    key = server.add_key("k1")

    verified = oidc(server, clock).verify(rs256(key, "k1"))

    assert verified.kind == "oidc"
    assert verified.subject == "user_123"
    assert verified.tenant_id is None


def test_an_oidc_token_with_a_foreign_azp_is_refused() -> None:
    server, clock = FakeJwksServer(), Clock()
    key = server.add_key("k1")
    refuse(oidc(server, clock), rs256(key, "k1", azp="https://evil.example"))
    refuse(oidc(server, clock), rs256(key, "k1", azp=None))


def test_an_oidc_token_signed_by_another_key_is_refused() -> None:
    server, clock = FakeJwksServer(), Clock()
    server.add_key("k1")
    intruder = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refuse(oidc(server, clock), rs256(intruder, "k1"))


def test_an_oidc_token_with_another_algorithm_is_refused() -> None:
    server, clock = FakeJwksServer(), Clock()
    server.add_key("k1")
    token = jwt.encode(
        {
            "iss": OIDC_ISSUER,
            "sub": "u",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        "a-shared-secret-that-is-long-enough-for-hs256",
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    refuse(oidc(server, clock), token)


def test_an_unknown_kid_refetches_at_most_once_per_cooldown() -> None:
    server, clock = FakeJwksServer(), Clock()
    key = server.add_key("k1")
    verifier = oidc(server, clock)
    verifier.verify(rs256(key, "k1"))
    assert server.fetches == 1
    refuse(verifier, rs256(key, "made-up"))
    assert server.fetches == 1  # just fetched: the cooldown holds

    clock.now += 31
    for _ in range(5):
        refuse(verifier, rs256(key, "made-up"))
    assert server.fetches == 2

    clock.now += 31
    refuse(verifier, rs256(key, "made-up"))
    assert server.fetches == 3


def test_a_failing_jwks_endpoint_keeps_the_last_good_keys_for_a_bounded_time() -> None:
    server, clock = FakeJwksServer(), Clock()
    key = server.add_key("k1")
    verifier = oidc(server, clock)
    verifier.verify(rs256(key, "k1"))

    server.failing = True
    clock.now += 600  # past the lifespan: a refetch fails, last good keys serve
    assert verifier.verify(rs256(key, "k1")).subject == "user_123"

    clock.now += 3600  # past stale_for since the last success: nothing verifies
    refuse(verifier, rs256(key, "k1"))

    server.failing = False
    clock.now += 31
    assert verifier.verify(rs256(key, "k1")).subject == "user_123"


# --- Through the middleware, against the database --------------------------


def _through_middleware(token: str) -> dict[str, Any]:
    """Run a request with ``token`` through the tenant middleware."""
    from django.contrib.auth.models import AnonymousUser
    from django.http import HttpResponse
    from django.test import RequestFactory

    from tenants.middleware import TenantScopeMiddleware

    seen: dict[str, Any] = {}

    def view(request: Any) -> HttpResponse:
        seen["principal"] = request.principal
        seen["error"] = request.auth_error
        seen["tenant"] = request.tenant_id
        return HttpResponse()

    request = RequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {token}")
    request.user = AnonymousUser()
    TenantScopeMiddleware(view)(request)
    return seen


@pytest.mark.django_db
def test_a_device_token_resolves_to_its_device_and_member(
    tenant_a: TenantWorld,
) -> None:
    seen = _through_middleware(tenant_a.member_device.token)
    assert seen["error"] is None
    assert seen["principal"].device == tenant_a.member_device.device
    assert seen["principal"].member == tenant_a.member
    assert seen["tenant"] == tenant_a.tenant.pk


@pytest.mark.django_db
def test_a_token_naming_another_tenant_finds_no_device(
    tenant_a: TenantWorld, tenant_b: TenantWorld
) -> None:
    from agentvault.auth.tokens import get_registry

    device = tenant_a.member_device.device
    token, _ = get_registry().builtin.issue(
        device_id=device.pk, member_id=device.member_id, tenant_id=tenant_b.tenant.pk
    )
    seen = _through_middleware(token)
    assert seen["principal"] is None
    assert seen["error"].code == "invalid_token"


@pytest.mark.django_db
def test_a_revoked_devices_unexpired_token_is_refused(tenant_a: TenantWorld) -> None:
    token = tenant_a.member_device.token
    with tenant_scope(tenant_a.tenant.pk):
        device = tenant_a.member_device.device
        device.status = "revoked"
        device.save(update_fields=["status"])
    seen = _through_middleware(token)
    assert seen["principal"] is None
    assert seen["error"].code == "device_revoked"


@pytest.mark.django_db
def test_an_oidc_subject_maps_to_its_member_through_the_database(
    tenant_a: TenantWorld,
) -> None:
    from agentvault.auth.principal import resolve_principal, tenant_of
    from agentvault.auth.tokens import VerifiedToken

    user = User.objects.create_user(
        username="oidc-user",
        tenant=tenant_a.tenant,
        oidc_issuer=OIDC_ISSUER,
        oidc_subject="user_123",
    )
    with tenant_scope(tenant_a.tenant.pk):
        member = Member.objects.create(
            tenant=tenant_a.tenant, name="web owner", user=user
        )

    token = VerifiedToken(
        issuer=OIDC_ISSUER,
        subject="user_123",
        kind="oidc",
        claims={"tid": str(uuid.uuid4())},  # a custom claim is never trusted
        expires_at=0,
    )
    assert tenant_of(token) == tenant_a.tenant.pk
    with tenant_scope(tenant_a.tenant.pk):
        assert resolve_principal(token, tenant_a.tenant.pk).member == member

    stranger = VerifiedToken(
        issuer=OIDC_ISSUER, subject="user_999", kind="oidc", claims={}, expires_at=0
    )
    with pytest.raises(TokenError):
        tenant_of(stranger)
