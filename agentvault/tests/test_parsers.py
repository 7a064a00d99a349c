"""Request bodies the JSON parser cannot handle are a 400, never a 500."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

DEEP = "[" * 50_000 + "]" * 50_000


def _post(api: APIClient, body: str) -> dict[str, object]:
    response = api.post("/api/v1/auth/challenge", body, content_type="application/json")
    assert response.status_code == 400
    return response.json()  # type: ignore[no-any-return]


def test_deeply_nested_json_is_a_malformed_request(api: APIClient) -> None:
    body = _post(api, DEEP)

    assert body["code"] == "malformed_request"
    assert body == _post(api, "{not json")


def test_deeply_nested_json_inside_an_object_is_a_malformed_request(
    api: APIClient,
) -> None:
    body = _post(api, '{"device_id": ' + DEEP + "}")

    assert body["code"] == "malformed_request"
