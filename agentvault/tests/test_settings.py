"""Bad settings stop the process at start-up with a message naming the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AV_", "DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY"))
    }
    base.update(env)
    base["DJANGO_SETTINGS_MODULE"] = "agentvault.settings"
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


EXTERNAL = {"DATABASE_URL": "postgres://app@127.0.0.1:1/agentvault"}
KEYED = {
    **EXTERNAL,
    "AV_SECRET_KEY": "k" * 50,
    "AV_SIGNING_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (EXTERNAL, "Set AV_SECRET_KEY (or AV_SECRET_KEY_FILE)"),
        (
            {**EXTERNAL, "AV_SECRET_KEY": "k" * 50},
            "Set AV_SIGNING_KEY (or AV_SIGNING_KEY_FILE)",
        ),
        (
            {**EXTERNAL, "AV_SECRET_KEY": "k" * 50, "AV_SIGNING_KEY": "bm90IGEga2V5"},
            "must be the base64 of a 32-byte Ed25519 seed",
        ),
        (KEYED, "Set AV_INVITE_PEPPER"),
        (
            {
                **EXTERNAL,
                "AV_SECRET_KEY": "k" * 50,
                "AV_SIGNING_KEY_FILE": "/nonexistent/key",
            },
            "AV_SIGNING_KEY_FILE points to '/nonexistent/key'",
        ),
        (
            {**EXTERNAL, "AV_SECRET_KEY": "k", "WEB_CONCURRENCY": "2"},
            "WEB_CONCURRENCY=2 needs REDIS_URL",
        ),
        (
            {**KEYED, "AV_OIDC_ISSUERS": "[not json"},
            "AV_OIDC_ISSUERS must be a JSON list",
        ),
        (
            {**KEYED, "AV_OIDC_ISSUERS": '[{"issuer": "x"}]'},
            '"issuer" and "jwks_url"',
        ),
    ],
)
def test_a_bad_setting_names_the_fix(env: dict[str, str], message: str) -> None:
    result = start(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_a_malformed_signing_key_names_the_fix() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from agentvault.auth.tokens import BuiltinIssuer

    with pytest.raises(ImproperlyConfigured, match="base64 of a 32-byte Ed25519 seed"):
        BuiltinIssuer(
            issuer="x", audience="y", keys=["bm90IGEga2V5"], lifetime=1, leeway=0
        )
