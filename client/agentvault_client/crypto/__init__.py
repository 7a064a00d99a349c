"""Provide AgentVault's end-to-end encryption: X3DH, Double Ratchet, envelopes.

The public surface most callers need is re-exported here; the submodules hold
the details (``primitives``, ``keys``, ``x3dh``, ``ratchet``, ``envelope``,
``session``, ``safety``).
"""

from agentvault_client.crypto.envelope import decode_b64, encode_b64
from agentvault_client.crypto.keys import (
    IdentityKeyPair,
    OneTimePrekey,
    PrekeyBundle,
    SignedPrekey,
    make_prekey_upload,
    signed_prekey_message,
    verify_signed_prekey,
)
from agentvault_client.crypto.safety import (
    fingerprint,
    format_safety_number,
    safety_number,
    safety_numbers_match,
)
from agentvault_client.crypto.session import (
    LocalDevice,
    PrekeySource,
    SessionRecord,
)

__all__ = [
    "IdentityKeyPair",
    "LocalDevice",
    "OneTimePrekey",
    "PrekeyBundle",
    "PrekeySource",
    "SessionRecord",
    "SignedPrekey",
    "decode_b64",
    "encode_b64",
    "fingerprint",
    "format_safety_number",
    "make_prekey_upload",
    "safety_number",
    "safety_numbers_match",
    "signed_prekey_message",
    "verify_signed_prekey",
]
