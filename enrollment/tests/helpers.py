"""Helpers of the enrollment tests: invites, enrollment, tokens and prekeys."""

from __future__ import annotations

import base64
import dataclasses
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from enrollment import crypto
from enrollment.models import Device
from tenants.scope import tenant_scope
from tests.support import TenantWorld


def b64(data: bytes) -> str:
    """Return standard, padded base64."""
    return base64.b64encode(bytes(data)).decode("ascii")


def as_admin(api: APIClient, world: TenantWorld, *, who: str = "admin") -> APIClient:
    """Authenticate ``api`` as one of the world's devices."""
    identity = getattr(world, f"{who}_device")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {identity.token}")
    return api


def create_invite(api: APIClient, world: TenantWorld, **body: Any) -> dict[str, Any]:
    """Create an invite as the world's tenant admin; return the response body."""
    body = body or {"name": "Scout", "kind": "agent"}
    as_admin(api, world)
    response = api.post("/api/v1/invites", body, format="json")
    api.credentials()
    assert response.status_code == 201, response.json()
    return response.json()  # type: ignore[no-any-return]


def proof(key: SigningKey, token: str) -> str:
    """Return the enrollment proof of ``token`` by ``key``."""
    return b64(key.sign(crypto.enrollment_proof_message(token)).signature)


def enroll(
    api: APIClient,
    token: str,
    key: SigningKey | None = None,
    *,
    signer: SigningKey | None = None,
    name: str = "phone",
    **extra: Any,
) -> Any:
    """Post an enrollment; ``signer`` signs the proof (default: ``key``)."""
    key = key or SigningKey.generate()
    body = {
        "invite_token": token,
        "identity_key": b64(bytes(key.verify_key)),
        "device_name": name,
        "proof": proof(signer or key, token),
    }
    api.credentials()
    return api.post("/api/v1/enrollments", body, format="json", **extra)


def challenge(api: APIClient, device_id: uuid.UUID | str) -> bytes:
    """Ask for a challenge and return its bytes."""
    api.credentials()
    response = api.post(
        "/api/v1/auth/challenge", {"device_id": str(device_id)}, format="json"
    )
    assert response.status_code == 200, response.json()
    return base64.b64decode(response.json()["challenge"])


def sign_challenge(key: SigningKey, value: bytes, device_id: uuid.UUID | str) -> str:
    """Return the signature of a challenge for ``device_id``."""
    audience = settings.AGENTVAULT_AUTH["AUDIENCE"]
    message = crypto.auth_challenge_message(value, uuid.UUID(str(device_id)), audience)
    return b64(key.sign(message).signature)


def request_token(
    api: APIClient,
    device_id: uuid.UUID | str,
    key: SigningKey,
    value: bytes | None = None,
) -> Any:
    """Run challenge and token; return the token response."""
    value = challenge(api, device_id) if value is None else value
    body = {
        "device_id": str(device_id),
        "challenge": b64(value),
        "signature": sign_challenge(key, value, device_id),
    }
    api.credentials()
    return api.post("/api/v1/auth/token", body, format="json")


@dataclasses.dataclass
class PrekeySet:
    """Prekeys generated for one device."""

    signed_id: int
    signed_public: bytes
    signed_signature: bytes
    one_time: list[tuple[int, bytes]]

    def body(self, *, with_signed: bool = True) -> dict[str, Any]:
        """Return the upload body."""
        body: dict[str, Any] = {
            "one_time_prekeys": [
                {"id": key_id, "public_key": b64(public)}
                for key_id, public in self.one_time
            ]
        }
        if with_signed:
            body["signed_prekey"] = {
                "id": self.signed_id,
                "public_key": b64(self.signed_public),
                "signature": b64(self.signed_signature),
            }
        return body


def make_prekeys(
    key: SigningKey, *, signed_id: int = 1, ids: range | list[int] = range(1, 11)
) -> PrekeySet:
    """Generate a signed prekey and one-time prekeys for the identity ``key``."""
    signed_public = bytes(PrivateKey.generate().public_key)
    message = crypto.signed_prekey_message(signed_id, signed_public)
    return PrekeySet(
        signed_id=signed_id,
        signed_public=signed_public,
        signed_signature=key.sign(message).signature,
        one_time=[(i, bytes(PrivateKey.generate().public_key)) for i in ids],
    )


def device(world: TenantWorld, device_id: uuid.UUID | str) -> Device:
    """Reload a device of ``world`` in its scope."""
    with tenant_scope(world.tenant.pk):
        return Device.objects.get(pk=device_id)


def audit_actions(world: TenantWorld) -> list[str]:
    """Return the actions of the world's audit events, oldest first."""
    from audit.models import AuditEvent

    with tenant_scope(world.tenant.pk):
        return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken record still gets its raw parts checked
            message = f"{record.msg!r} {record.args!r}"
        self.lines.append(f"{record.name} {message} {record.__dict__!r}")


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Collect every log record, from the root and non-propagating loggers."""
    handler = _Collect()
    root = logging.getLogger()
    loggers = [root] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
