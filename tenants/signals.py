"""Console logins and failed logins land in the tenant's audit trail."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

import audit
from tenants.models import User
from tenants.scope import tenant_scope

logger = logging.getLogger(__name__)


@receiver(user_logged_in)
def record_console_login(sender: Any, request: Any, user: User, **kwargs: Any) -> None:
    """Record a successful console login in the user's tenant."""
    if user.tenant_id is None:
        logger.info("Console login by user %s with no tenant", user.pk)
        return
    with tenant_scope(user.tenant_id):
        audit.record("console.login", actor=("user", user.pk), target=("user", user.pk))


@receiver(user_login_failed)
def record_console_login_failure(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    """Record a failed console login in the tenant of the named account.

    The credentials are never recorded or logged; a name that matches no
    account is counted in the log only.
    """
    username = credentials.get("username")
    user = User.objects.filter(username=username).only("pk", "tenant_id").first()
    if user is None or user.tenant_id is None:
        logger.info("Console login failed for an unknown account")
        return
    with tenant_scope(user.tenant_id):
        audit.record(
            "console.login_failed", actor="anonymous", target=("user", user.pk)
        )
