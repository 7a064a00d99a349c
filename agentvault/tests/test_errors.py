"""Every API failure leaves as the same envelope with a stable code."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from tests.support import TenantWorld

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.urls("agentvault.tests.urls"),
]


def envelope(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"code", "message", "fields"}
    return body  # type: ignore[no-any-return]


def test_a_validation_error_names_the_field(api: APIClient) -> None:
    response = api.post("/api/v1/test/echo", {"count": 0}, format="json")
    body = envelope(response)
    assert response.status_code == 400
    assert body["code"] == "invalid_request"
    assert body["fields"] == {
        "count": ["Ensure this value is greater than or equal to 1."]
    }


def test_malformed_json_is_a_stable_code(api: APIClient) -> None:
    response = api.post(
        "/api/v1/test/echo", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert envelope(response)["code"] == "malformed_request"


def test_a_wrong_method_and_media_type(api: APIClient) -> None:
    response = api.get("/api/v1/test/echo")
    assert response.status_code == 405
    assert envelope(response)["code"] == "method_not_allowed"
    response = api.post("/api/v1/test/echo", "count=1", content_type="text/plain")
    assert response.status_code == 415
    assert envelope(response)["code"] == "unsupported_media_type"


def test_no_token_is_401_with_a_challenge(api: APIClient) -> None:
    response = api.get("/api/v1/test/whoami")
    assert response.status_code == 401
    assert envelope(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == 'Bearer realm="agentvault"'


def test_a_bad_token_is_401_invalid_token(api: APIClient) -> None:
    api.credentials(HTTP_AUTHORIZATION="Bearer not.a.token")
    response = api.get("/api/v1/test/whoami")
    assert response.status_code == 401
    assert envelope(response)["code"] == "invalid_token"
    assert 'error="invalid_token"' in response["WWW-Authenticate"]


def test_a_device_token_authenticates(api: APIClient, tenant_a: TenantWorld) -> None:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.member_device.token}")
    response = api.get("/api/v1/test/whoami")
    assert response.status_code == 200
    assert response.json() == {"member_id": str(tenant_a.member.pk)}


def test_a_member_gets_403_on_an_admin_endpoint(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.member_device.token}")
    response = api.get("/api/v1/test/admin")
    assert response.status_code == 403
    assert envelope(response)["code"] == "forbidden"

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.admin_device.token}")
    assert api.get("/api/v1/test/admin").status_code == 200


def test_a_pending_device_is_refused_by_default(
    api: APIClient, tenant_a: TenantWorld
) -> None:
    from tenants.scope import tenant_scope

    with tenant_scope(tenant_a.tenant.pk):
        device = tenant_a.member_device.device
        device.status = "pending"
        device.save(update_fields=["status"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.member_device.token}")
    response = api.get("/api/v1/test/whoami")
    assert response.status_code == 403
    assert envelope(response)["code"] == "forbidden"


def test_domain_errors_carry_their_fields(api: APIClient) -> None:
    response = api.get("/api/v1/test/conflict")
    assert response.status_code == 409
    assert envelope(response) == {
        "code": "conflict",
        "message": "The request conflicts with the current state.",
        "fields": {"missing": ["a"]},
    }


def test_an_unknown_api_path_is_the_envelope(api: APIClient) -> None:
    response = api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert envelope(response)["code"] == "not_found"


def test_a_server_error_says_nothing_of_the_cause() -> None:
    client = Client(raise_request_exception=False)
    with override_settings(DEBUG=False):
        response = client.get("/api/v1/test/boom")
    assert response.status_code == 500
    assert envelope(response) == {
        "code": "server_error",
        "message": "Internal server error.",
        "fields": {},
    }
    assert b"boom" not in response.content


def test_responses_carry_a_request_id(api: APIClient) -> None:
    response = api.get("/api/v1/test/conflict", HTTP_X_REQUEST_ID="client-chosen-id")
    assert len(response["X-Request-ID"]) == 32
    assert response["X-Request-ID"] != "client-chosen-id"


def test_the_openapi_schema_is_served(api: APIClient) -> None:
    response = api.get(
        "/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert response.status_code == 200
    assert b"openapi" in response.content


def test_a_body_over_the_upload_limit_is_the_envelope(api: APIClient) -> None:
    client = Client(raise_request_exception=False)
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = client.post(
            "/api/v1/test/echo",
            data='{"count": 1, "pad": "' + "x" * 5000 + '"}',
            content_type="application/json",
        )
    assert response.status_code == 413
    assert envelope(response)["code"] == "payload_too_large"
