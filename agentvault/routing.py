"""The ASGI application: HTTP (DRF and the console) and the WebSocket relay."""

from __future__ import annotations

from typing import Any


def build_application() -> Any:
    """Return the protocol router; Django must already be set up."""
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from django.core.asgi import get_asgi_application

    from messaging.routing import websocket_urlpatterns

    return ProtocolTypeRouter(
        {
            "http": get_asgi_application(),
            "websocket": build_websocket_application(
                AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns))
            ),
        }
    )


def build_websocket_application(app: Any) -> Any:
    """Wrap the relay's router: spans (when tracing is on), then abuse guard.

    The span is outermost so that refused and throttled sockets show too;
    its URL attributes lose the query string (``?token=``) in the hook and
    again in the exporter. Tracing must be configured before this runs.
    """
    from agentvault.abuse import AuthFailureGuard
    from agentvault.observability.tracing import trace_websocket

    return trace_websocket(AuthFailureGuard(app))
