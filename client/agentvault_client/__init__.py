"""Client SDK for AgentVault: end-to-end encryption and the local state store."""

from agentvault_client.errors import (
    AuthError,
    CryptoError,
    ProtocolError,
    SdkError,
)

__all__ = ["AuthError", "CryptoError", "ProtocolError", "SdkError"]
__version__ = "0.1.0"
