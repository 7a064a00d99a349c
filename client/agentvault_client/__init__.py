"""Client SDK for AgentVault: end-to-end encryption, the local state store,
the REST and relay client (sync and asyncio) and the ``agentvault`` CLI."""

from agentvault_client.aio import (
    AsyncAgentVaultClient,
    DeviceInfo,
    Room,
    RoomDevice,
    SendResult,
)
from agentvault_client.client import AgentVaultClient
from agentvault_client.errors import (
    ApiError,
    AuthError,
    CryptoError,
    ProtocolError,
    SdkError,
    TransportError,
)
from agentvault_client.messages import Message

__all__ = [
    "AgentVaultClient",
    "ApiError",
    "AsyncAgentVaultClient",
    "AuthError",
    "CryptoError",
    "DeviceInfo",
    "Message",
    "ProtocolError",
    "Room",
    "RoomDevice",
    "SdkError",
    "SendResult",
    "TransportError",
]
__version__ = "0.1.0"
