"""Health probes and the Prometheus endpoint: ``/healthz``, ``/readyz``, ``/metrics``.

They need no authentication and no tenant. ``ProbeMiddleware`` answers them
before the session, CSRF, host and tenant middleware run, so a liveness
probe never touches the database and a probe's ``Host`` (a pod IP) is not
refused by ``ALLOWED_HOSTS``; the URL routes serve the same views when the
middleware is absent.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentvault.context import request_client_ip
from agentvault.observability import metrics

logger = logging.getLogger(__name__)

DEFAULT_METRICS_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)

_redis_lock = threading.Lock()
_redis_clients: dict[str, Any] = {}


def observability_settings() -> dict[str, Any]:
    """Return the ``OBSERVABILITY`` settings with their defaults."""
    configured = getattr(settings, "OBSERVABILITY", {}) or {}
    return {
        "METRICS_NETWORKS": list(DEFAULT_METRICS_NETWORKS),
        "METRICS_TOKEN": None,
        "READY_TIMEOUT": 2.0,
        **configured,
    }


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    """Answer 200 while the process serves requests; touch nothing else."""
    return _no_store(JsonResponse({"status": "ok"}))


def _check_database(timeout: float) -> bool:
    # As the app role (the "default" alias), outside any tenant scope.
    # The connection goes back to the pool when the request finishes.
    try:
        with transaction.atomic(using="default"):
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    [str(int(timeout * 1000))],
                )
                cursor.execute("SELECT 1")
                cursor.fetchone()
        return True
    except Exception as exc:
        logger.warning(
            "Readiness: database unreachable",
            extra={"error_code": type(exc).__name__},
        )
        return False


def _redis_client(url: str, timeout: float) -> Any:
    import redis

    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            _redis_clients[url] = client
        return client


def _check_redis(url: str, timeout: float) -> bool:
    try:
        return bool(_redis_client(url, timeout).ping())
    except Exception as exc:
        logger.warning(
            "Readiness: Redis unreachable",
            extra={"error_code": type(exc).__name__},
        )
        return False


def readyz(request: HttpRequest) -> HttpResponse:
    """Answer 200 when the database (and Redis, when configured) answer.

    Failures say which dependency failed, never why: error texts may
    name hosts and users.
    """
    timeout = float(observability_settings()["READY_TIMEOUT"])
    checks = {"database": "ok" if _check_database(timeout) else "fail"}
    redis_url = getattr(settings, "REDIS_URL", "")
    if redis_url:
        checks["redis"] = "ok" if _check_redis(redis_url, timeout) else "fail"

    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ready else "fail", "checks": checks}
    return _no_store(JsonResponse(body, status=200 if ready else 503))


def _peer_allowed(request: HttpRequest, networks: list[str]) -> bool:
    # The real client: behind a trusted proxy, not the proxy's own address.
    address = request_client_ip(request) or ""
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(
        peer in ipaddress.ip_network(network, strict=False) for network in networks
    )


def _token_matches(request: HttpRequest, expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, offered = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(offered.strip().encode(), expected.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Render the metrics in Prometheus text format, to allowed scrapers only.

    Allowed: clients inside ``METRICS_NETWORKS`` (the client address of
    ``agentvault.context``, never a proxy's own) and, when
    ``METRICS_TOKEN`` is set, only those that also present it as a bearer
    token. Others get 404, so the endpoint is not advertised.
    """
    config = observability_settings()
    if not _peer_allowed(request, list(config["METRICS_NETWORKS"])):
        return _no_store(HttpResponse(status=404))
    token = config["METRICS_TOKEN"]
    if token and not _token_matches(request, str(token)):
        return _no_store(HttpResponse(status=404))

    output = generate_latest(metrics.registry())
    return _no_store(HttpResponse(output, content_type=CONTENT_TYPE_LATEST))


PROBES = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_view,
}
