"""Settings of the AgentVault server, read from the environment.

Every value comes from an environment variable (or ``NAME_FILE`` for secrets)
through django-environ; bad values stop the process at start-up with a message
that names the variable to fix. With no ``DATABASE_URL`` the server runs on the
embedded PostgreSQL under ``AV_DATA_DIR`` and generates its secrets there.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from tenants.db import reset_tenant_setting

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def env_secret(name: str) -> str | None:
    """Return secret ``name`` from the environment or from the file ``NAME_FILE``."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{name}_FILE points to {path!r}, which cannot be read "
                f"({exc.strerror})."
            ) from None
    return os.environ.get(name) or None


def _generated_secret(data_dir: Path, name: str, factory: Any) -> str:
    """Return a secret kept in the data directory, creating it on first use."""
    folder = data_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(factory())
    return path.read_text().strip()


def _new_signing_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _required_secret(name: str, *, data_dir: Path, embedded: bool, factory: Any) -> str:
    value = env_secret(name)
    if value:
        return value
    if embedded:
        return _generated_secret(data_dir, name.lower(), factory)
    raise ImproperlyConfigured(
        f"Set {name} (or {name}_FILE): it is required when DATABASE_URL is set."
    )


# --- Core -----------------------------------------------------------------

DATA_DIR = Path(env.str("AV_DATA_DIR", default=str(BASE_DIR / ".agentvault")))
DATA_DIR = DATA_DIR.expanduser().resolve()
EMBEDDED = not (os.environ.get("DATABASE_URL") or os.environ.get("DATABASE_URL_FILE"))

DEBUG = env.bool("AV_DEBUG", default=False)
SECRET_KEY = _required_secret(
    "AV_SECRET_KEY",
    data_dir=DATA_DIR,
    embedded=EMBEDDED,
    factory=lambda: secrets.token_urlsafe(50),
)
ALLOWED_HOSTS = env.list(
    "AV_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"]
)
CSRF_TRUSTED_ORIGINS = env.list("AV_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "guardian",
    "channels",
    "agentvault.observability",
    "tenants",
    "audit",
    "enrollment",
    "messaging",
]

MIDDLEWARE = [
    # Probes and /metrics first: no host check, session or tenant transaction.
    "agentvault.observability.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "agentvault.context.RequestContextMiddleware",
    "agentvault.observability.middleware.RequestLogMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.middleware.TenantScopeMiddleware",
    "agentvault.observability.middleware.LogIdentityMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "agentvault.urls"
ASGI_APPLICATION = "agentvault.asgi.application"
AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Console accounts are tenant staff; guardian's anonymous user is not needed.
ANONYMOUS_USER_NAME = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool(
    "AV_SECURE_COOKIES", default=not DEBUG and not EMBEDDED
)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- Database ---------------------------------------------------------------
# "default" serves requests as the app role. Migrations connect as the owner
# role (see tenants.db.owner_credentials); an optional operator role with
# BYPASSRLS serves the few commands that read across tenants.

_POOL = {
    "min_size": env.int("AV_DB_POOL_MIN", default=1),
    "max_size": env.int("AV_DB_POOL_MAX", default=10),
    "timeout": env.float("AV_DB_POOL_TIMEOUT", default=10.0),
    "max_lifetime": 1800,
    # Second guard behind transaction-local settings: a connection returned
    # to the pool forgets its tenant.
    "reset": reset_tenant_setting,
}


def _database(url: str) -> dict[str, Any]:
    config: dict[str, Any] = env.db_url_config(url)
    config["CONN_MAX_AGE"] = 0
    config["CONN_HEALTH_CHECKS"] = False
    config["ATOMIC_REQUESTS"] = False
    config.setdefault("OPTIONS", {})
    return config


if EMBEDDED:
    from agentvault.embedded import ensure_embedded_postgres

    _embedded = ensure_embedded_postgres(DATA_DIR)

    def _embedded_url(role: str) -> str:
        return (
            f"postgres://{role}@/{_embedded.name}"
            f"?host={_embedded.socket_dir}&port={_embedded.port}"
        )

    _app_url = _embedded_url(_embedded.app)
    _owner_url = _embedded_url(_embedded.owner)
    _operator_url: str | None = _embedded_url(_embedded.operator)
else:
    # Database URLs carry passwords: like secrets, each accepts NAME_FILE.
    _app_url = env_secret("DATABASE_URL") or ""
    _owner_url = env_secret("MIGRATE_DATABASE_URL") or _app_url
    _operator_url = env_secret("OPERATOR_DATABASE_URL")

DATABASES = {"default": _database(_app_url)}
DATABASES["default"]["OPTIONS"]["pool"] = dict(_POOL)
DATABASES["default"]["TEST"] = {"NAME": env.str("AV_TEST_DB_NAME", default="")}
if not DATABASES["default"]["TEST"]["NAME"]:
    DATABASES["default"]["TEST"] = {}

DATABASE_ROLES = {
    "app": _database(_app_url),
    "owner": _database(_owner_url),
    "operator": _database(_operator_url) if _operator_url else None,
}

# --- Channels and cache -------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=1)
if WEB_CONCURRENCY > 1 and not REDIS_URL:
    raise ImproperlyConfigured(
        f"WEB_CONCURRENCY={WEB_CONCURRENCY} needs REDIS_URL: the in-memory channel "
        "layer and cache serve one worker process only."
    )

if REDIS_URL:
    _layer_config: dict[str, Any] = {
        # The socket timeout must outlast channels-redis's 5 s blocking read,
        # or an idle relay socket is dropped when the read times out.
        "hosts": [
            {
                "address": REDIS_URL,
                "socket_timeout": env.float("AV_REDIS_SOCKET_TIMEOUT", default=60.0),
                "max_connections": env.int("AV_REDIS_MAX_CONNECTIONS", default=1000),
            }
        ],
        "capacity": env.int("AV_CHANNEL_CAPACITY", default=200),
        "expiry": 60,
        # Longer than the longest socket (daphne --websocket_timeout).
        "group_expiry": env.int("AV_GROUP_EXPIRY", default=86400),
        "prefix": "av",
    }
    # A list, so rotation is a configuration change: the first key
    # encrypts, every key decrypts.
    _layer_keys = env.list("AV_CHANNEL_ENCRYPTION_KEYS", default=[])
    if _layer_keys:
        _layer_config["symmetric_encryption_keys"] = _layer_keys
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": _layer_config,
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "avc",
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": env.int("AV_CHANNEL_CAPACITY", default=200)},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "agentvault",
        }
    }

# --- API ------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["agentvault.auth.drf.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["agentvault.auth.drf.IsActiveDevice"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["agentvault.parsers.SafeJSONParser"],
    "EXCEPTION_HANDLER": "agentvault.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "agentvault.schema.ApiAutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "AgentVault API",
    "DESCRIPTION": "Zero-knowledge relay between AI agents and their owners.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {
        "MemberKindEnum": "tenants.models.Member.Kind",
        "MemberRoleEnum": "tenants.models.Member.Role",
    },
}


def _oidc_issuers() -> list[dict[str, Any]]:
    raw = env.str("AV_OIDC_ISSUERS", default="")
    if not raw:
        return []
    try:
        issuers = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(
            f"AV_OIDC_ISSUERS must be a JSON list of issuer objects ({exc.msg})."
        ) from None
    if not isinstance(issuers, list) or not all(
        isinstance(item, dict) and item.get("issuer") and item.get("jwks_url")
        for item in issuers
    ):
        raise ImproperlyConfigured(
            "AV_OIDC_ISSUERS must be a JSON list of objects with at least "
            '"issuer" and "jwks_url".'
        )
    return issuers


def _signing_keys() -> list[str]:
    primary = _required_secret(
        "AV_SIGNING_KEY",
        data_dir=DATA_DIR,
        embedded=EMBEDDED,
        factory=_new_signing_key,
    )
    fallbacks = env.list("AV_SIGNING_KEY_FALLBACKS", default=[])
    keys = [primary, *fallbacks]
    for key in keys:
        try:
            valid = len(base64.b64decode(key, validate=True)) == 32
        except ValueError:
            valid = False
        if not valid:
            raise ImproperlyConfigured(
                "AV_SIGNING_KEY and each AV_SIGNING_KEY_FALLBACKS entry must be the "
                'base64 of a 32-byte Ed25519 seed (python -c "import base64, os; '
                'print(base64.b64encode(os.urandom(32)).decode())").'
            )
    return keys


AGENTVAULT_AUTH = {
    "ISSUER": env.str("AV_TOKEN_ISSUER", default="agentvault"),
    "AUDIENCE": "agentvault",
    "TOKEN_LIFETIME": env.int("AV_TOKEN_LIFETIME", default=900),
    "LEEWAY": env.int("AV_TOKEN_LEEWAY", default=10),
    "SIGNING_KEYS": _signing_keys(),
    "OIDC_ISSUERS": _oidc_issuers(),
    "JWKS_LIFESPAN": env.int("AV_JWKS_LIFESPAN", default=300),
    "JWKS_STALE_FOR": env.int("AV_JWKS_STALE_FOR", default=3600),
    "JWKS_COOLDOWN": env.int("AV_JWKS_COOLDOWN", default=30),
    "JWKS_TIMEOUT": env.float("AV_JWKS_TIMEOUT", default=3.0),
}

AGENTVAULT = {
    "INVITE_PEPPER": _required_secret(
        "AV_INVITE_PEPPER",
        data_dir=DATA_DIR,
        embedded=EMBEDDED,
        factory=lambda: secrets.token_urlsafe(32),
    ),
    "TRUSTED_PROXIES": env.list("AV_TRUSTED_PROXIES", default=[]),
}

# --- Logging, metrics, traces -------------------------------------------------
# JSON lines with allow-listed fields only (agentvault.observability.logging):
# no mail_admins handler, no request objects, no query strings, no locals.

from agentvault.observability.logging import (  # noqa: E402
    build_logging,
    configure_structlog,
)

LOG_LEVEL = env.str("AV_LOG_LEVEL", default="INFO")
LOGGING = build_logging(
    level=LOG_LEVEL,
    fmt=env.str("AV_LOG_FORMAT", default="json"),
    extra_fields=env.list("AV_LOG_EXTRA_FIELDS", default=[]),
)
configure_structlog()
# The correlation id of agentvault.context replaces django-structlog's own;
# the client IP is bound from the same place (trusted proxies only).
DJANGO_STRUCTLOG_IP_LOGGING_ENABLED = False
DJANGO_STRUCTLOG_USER_ID_FIELD = None
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = False
DJANGO_STRUCTLOG_TRUST_UPSTREAM_CORRELATION_ID = False
DJANGO_STRUCTLOG_COMMAND_LOGGING_ENABLED = False

OBSERVABILITY = {
    # Peers allowed to scrape /metrics (socket address), and an optional
    # bearer token they must also present.
    "METRICS_NETWORKS": env.list(
        "AV_METRICS_NETWORKS",
        default=[
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ],
    ),
    "METRICS_TOKEN": env_secret("AV_METRICS_TOKEN"),
    # Seconds /readyz waits for PostgreSQL and Redis.
    "READY_TIMEOUT": env.float("AV_READY_TIMEOUT", default=2.0),
}

# --- Enrollment (invites, device tokens, prekeys) ----------------------------------

ENROLLMENT: dict[str, Any] = {
    # Invites: default and longest lifetime, in seconds.
    "INVITE_LIFETIME": env.int("AV_INVITE_LIFETIME", default=24 * 3600),
    "INVITE_MAX_LIFETIME": 7 * 24 * 3600,
    # Every enrollment attempt counts, per client IP.
    "ENROLL_RATE": env.str("AV_ENROLL_RATE", default="5/10m"),
    # Device authentication: challenge lifetime (s) and attempts per IP.
    "CHALLENGE_LIFETIME": 60,
    "AUTH_RATE": env.str("AV_AUTH_RATE", default="30/m"),
    # Prekey directory.
    "PREKEYS_PER_UPLOAD": 100,
    "PREKEYS_STORED": env.int("AV_PREKEYS_STORED", default=1000),
    "BUNDLE_RATE": env.str("AV_BUNDLE_RATE", default="20/m"),
}

# --- Abuse escalation (authentication failures) ---------------------------------

# Failures per client address and per device within a window; the one that
# reaches the count blocks the key for BLOCK_SECONDS (429 with Retry-After)
# and writes one security.auth_failure_spike audit event. See agentvault.abuse.
ABUSE: dict[str, Any] = {
    "IP_FAILURE_RATE": env.str("AV_IP_FAILURE_RATE", default="20/10m"),
    "DEVICE_FAILURE_RATE": env.str("AV_DEVICE_FAILURE_RATE", default="10/10m"),
    "BLOCK_SECONDS": env.int("AV_AUTH_BLOCK_SECONDS", default=600),
}

# --- Messaging (rooms, delivery, relay) ---------------------------------------------

# Defaults live in messaging/conf.py; these are the ones operators tune.
MESSAGING: dict[str, Any] = {
    "QUEUE_CAP": env.int("AV_QUEUE_CAP", default=10_000),
    "SEND_RATE": env.float("AV_SEND_RATE", default=50.0),
    "SEND_BURST": env.int("AV_SEND_BURST", default=200),
    "RETENTION_DAYS": env.int("AV_RETENTION_DAYS", default=30),
    "ACK_TIMEOUT": env.float("AV_RELAY_ACK_TIMEOUT", default=30.0),
    "SWEEP_INTERVAL": env.float("AV_RELAY_SWEEP_INTERVAL", default=15.0),
    # Without Redis, events from another process (a manage.py revoke_device)
    # cannot reach the worker: its survey is the only way a revocation made
    # there closes sockets, so it runs often enough to do it within a second.
    "STATUS_INTERVAL": env.float(
        "AV_RELAY_STATUS_INTERVAL", default=15.0 if REDIS_URL else 0.5
    ),
    "FRAME_RATE": env.float("AV_RELAY_FRAME_RATE", default=100.0),
    "FRAME_BURST": env.int("AV_RELAY_FRAME_BURST", default=400),
}
