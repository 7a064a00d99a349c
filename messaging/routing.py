"""WebSocket routes of the relay."""

from __future__ import annotations

from typing import Any

from django.urls import path

from messaging.consumers import RelayConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/v1/relay", RelayConsumer.as_asgi()),
]
