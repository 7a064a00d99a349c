"""Rate limits of enrollment, device authentication and prekey claims.

Counters live in the configured cache through django-ratelimit's fixed
windows (atomic ``add`` + ``incr`` on Redis). Every call counts, whether the
request then succeeds or not. The client address comes from
``agentvault.context.request_client_ip``, which trusts ``X-Forwarded-For``
only from the configured proxies.
"""

from __future__ import annotations

from typing import Any

from django_ratelimit.core import get_usage

from agentvault.context import request_client_ip
from agentvault.errors import RateLimitedError
from agentvault.observability import metrics
from enrollment.conf import option


def client_ip_key(group: str, request: Any) -> str:
    """Return the rate-limit key of a request: its client address."""
    return request_client_ip(request) or "unknown"


def count_attempt(
    request: Any, *, group: str, rate: str, key: str | None = None
) -> None:
    """Count one attempt; raise ``RateLimitedError`` once over ``rate``.

    ``key`` defaults to the client address. ``Retry-After`` is the time left
    in the current window.
    """
    usage = get_usage(
        request,
        group=group,
        key=client_ip_key if key is None else (lambda group, request: key),
        rate=rate,
        increment=True,
    )
    if usage is not None and usage["should_limit"]:
        metrics.RATE_LIMITED.labels(group).inc()
        raise RateLimitedError(retry_after=max(1, usage["time_left"]))


def count_enrollment_attempt(request: Any) -> None:
    """Count an enrollment attempt of the caller's address."""
    count_attempt(request, group="enrollment.enroll", rate=option("ENROLL_RATE"))


def count_auth_attempt(request: Any) -> None:
    """Count a challenge or token request of the caller's address."""
    count_attempt(request, group="enrollment.auth", rate=option("AUTH_RATE"))


def count_bundle_claim(request: Any, *, caller: str, target: str) -> None:
    """Count one claim of ``target``'s bundle by the device ``caller``."""
    count_attempt(
        request,
        group="enrollment.bundle",
        rate=option("BUNDLE_RATE"),
        key=f"{caller}:{target}",
    )
