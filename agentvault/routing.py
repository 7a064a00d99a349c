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
            "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
        }
    )
