"""The served OpenAPI schema tells the truth about every API operation.

Schemathesis loads the schema the server serves at ``/api/v1/schema/`` and
calls every operation in-process through the WSGI application, once as a
plain member's device and once as a tenant admin's device. Every answer must
be no server error, carry a documented status code and content type, and
have a body that matches the documented schema (the error envelope
included).

The run is bounded and reproducible: a fixed seed, deterministic generation,
a few examples per operation, no example database on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from enrollment import actions
from enrollment.tests.helpers import make_prekeys
from messaging.tests.helpers import make_room
from tenants.scope import tenant_scope
from tests.support import DeviceIdentity, TenantWorld, make_device

SCHEMA_PATH = "/api/v1/schema/"
SEED = 20240607
EXAMPLES = 8

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def wsgi_app(db: None) -> Iterator[WSGIHandler]:
    """Return the WSGI application, serving inside the test's transaction.

    The handler closes stale connections at the start and end of every
    request; inside the test's transaction that would break it, so the hook
    is off while the application serves (as Django's own test client does).
    Rate-limit counters start and end empty.
    """
    cache.clear()
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        cache.clear()


def _world_with_data(world: TenantWorld) -> dict[str, str]:
    """Give the tenant rooms, prekeys, an invite and a pending device.

    Return the ids of real objects by path parameter name, so the run also
    reaches past the lookups that random ids never pass.
    """
    room = make_room(world.owner, world.member, world.agent, name="ops")
    make_room(world.admin, world.member, name="admins")
    with tenant_scope(world.tenant.pk):
        pending = make_device(world.member, status="pending", name="phone")
        prekeys = make_prekeys(world.agent_device.signing_key)
        actions.do_upload_prekeys(
            world.agent_device.device,
            signed_prekey=actions.SignedPrekeyUpload(
                key_id=prekeys.signed_id,
                public_key=prekeys.signed_public,
                signature=prekeys.signed_signature,
            ),
            one_time_prekeys=[
                actions.OneTimePrekeyUpload(key_id=key_id, public_key=public)
                for key_id, public in prekeys.one_time
            ],
        )
        invite = actions.do_create_invite(
            tenant_id=world.tenant.pk,
            acting=world.admin,
            name="new hire",
            kind="human",
            role="member",
        ).invite
    return {
        "room_id": str(room.pk),
        "member_id": str(world.agent.pk),
        "device_id": str(pending.device.pk),
        "invite_id": str(invite.pk),
    }


@dataclasses.dataclass
class Api:
    """The served schema and the ids of real objects of the caller's tenant."""

    schema: BaseSchema
    known: dict[str, str]


@pytest.fixture
def api(wsgi_app: WSGIHandler, tenant_a: TenantWorld, tenant_b: TenantWorld) -> Api:
    """Return the schema the server serves, bound to the WSGI application."""
    known = _world_with_data(tenant_a)
    _world_with_data(tenant_b)
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_wsgi(SCHEMA_PATH, wsgi_app, config=config)
    return Api(schema=schema, known=known)


BOUNDED = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)


def _in_order(schema: BaseSchema) -> list[Any]:
    """Return the operations, the anonymous ones (enroll, auth) last.

    Their refused attempts count toward the caller address's limits and can
    block it; run earlier, they would leave the rest answering 429.
    """
    operations = [result.ok() for result in schema.get_all_operations()]
    return sorted(operations, key=lambda op: not _needs_token(op))


def _needs_token(operation: Any) -> bool:
    security = operation.definition.raw.get("security", [])
    return any("bearerAuth" in requirement for requirement in security)


def _failures(api: Api, caller: DeviceIdentity) -> list[str]:
    """Run every operation in both generation modes; return what failed.

    Operations with path parameters run a second time with the ids of real
    objects in the path (and generated bodies and queries).
    """
    headers = {"Authorization": f"Bearer {caller.token}"}
    failures = []
    for operation in _in_order(api.schema):
        names = {param.name for param in operation.path_parameters}
        known = {name: api.known[name] for name in names}
        for path in [None, known] if known else [None]:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path
                )
                label = f"{operation.label} ({mode.value}, {path or 'any ids'})"
                failure = _run(strategy, headers)
                if failure:
                    failures.append(f"{label}: {failure}")
    return failures


def _run(strategy: Any, headers: dict[str, str]) -> str | None:
    """Call and check the cases of ``strategy``; return the failure, if any."""

    @BOUNDED
    @given(case=strategy)
    def run(case: Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        return None  # nothing in the operation's input can be made invalid
    # Schemathesis raises its failures as a (base) exception group.
    except (Exception, BaseExceptionGroup) as exc:
        return str(exc)
    return None


def test_every_operation_answers_as_documented_to_a_member(
    api: Api, tenant_a: TenantWorld
) -> None:
    failures = _failures(api, tenant_a.member_device)

    assert failures == [], "\n\n".join(failures)


def test_every_operation_answers_as_documented_to_an_admin(
    api: Api, tenant_a: TenantWorld
) -> None:
    failures = _failures(api, tenant_a.admin_device)

    assert failures == [], "\n\n".join(failures)
