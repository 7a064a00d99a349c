"""Configure Syndace's ``doubleratchet`` exactly like AgentVault's ratchet.

Used as an independent implementation (an interop oracle) by the tests and
as the peer in ``bench/crypto.py``; never at run time. The parameters:
X25519; root KDF HKDF-SHA256 with salt = root key and our info string; chain
KDF HMAC-SHA256 with 0x02 (next chain key, first half) and 0x01 (message
key); XChaCha20-Poly1305 with a random 24-byte nonce sent before the
ciphertext; associated data = our ratchet envelope prefix || session AD.
"""

from __future__ import annotations

import nacl.bindings as sodium
import nacl.exceptions
from doubleratchet import DoubleRatchet, EncryptedMessage, Header
from doubleratchet.aead import AEAD, AuthenticationFailedException
from doubleratchet.recommended import (
    HashFunction,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)

from agentvault_client.crypto import envelope as env
from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto import ratchet


class XChaChaAEAD(AEAD):
    """XChaCha20-Poly1305 with the nonce prepended to the ciphertext."""

    @staticmethod
    async def encrypt(plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        """Encrypt under a random nonce; return nonce || ciphertext || tag."""
        nonce = prim.random_bytes(24)
        return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, associated_data, nonce, key
        )

    @staticmethod
    async def decrypt(ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        """Decrypt nonce || ciphertext || tag or raise the package's error."""
        try:
            plaintext: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext[24:], associated_data, ciphertext[:24], key
            )
        except nacl.exceptions.CryptoError:
            raise AuthenticationFailedException() from None
        return plaintext


class RootKDF(kdf_hkdf.KDF):
    """HKDF-SHA256 with AgentVault's ratchet info string."""

    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ratchet.RATCHET_INFO


class ChainKDF(kdf_separate_hmacs.KDF):
    """One HMAC-SHA256 per constant byte."""

    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256


class SyndaceRatchet(DoubleRatchet):
    """The package's Double Ratchet with AgentVault's associated data."""

    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        return (
            env.ratchet_prefix(
                header.ratchet_pub,
                header.previous_sending_chain_length,
                header.sending_chain_length,
            )
            + associated_data
        )


_DH_RATCHET = diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet
CONFIG = {
    "diffie_hellman_ratchet_class": _DH_RATCHET,
    "root_chain_kdf": RootKDF,
    "message_chain_kdf": ChainKDF,
    "message_chain_constant": ratchet.CHAIN_NEXT_KEY + ratchet.CHAIN_MESSAGE_KEY,
    "dos_protection_threshold": ratchet.MAX_SKIP,
    "max_num_skipped_message_keys": ratchet.MAX_SKIPPED_KEYS,
    "aead": XChaChaAEAD,
}


def to_syndace(data: bytes) -> EncryptedMessage:
    """Turn our ratchet envelope bytes into the package's message."""
    message = env.parse(data)
    assert message.type == env.TYPE_RATCHET
    header = Header(message.ratchet_key, message.pn, message.n)
    return EncryptedMessage(
        header=header, ciphertext=message.nonce + message.ciphertext
    )


def from_syndace(message: EncryptedMessage) -> bytes:
    """Turn the package's message into our ratchet envelope bytes."""
    header = message.header
    return (
        env.ratchet_prefix(
            header.ratchet_pub,
            header.previous_sending_chain_length,
            header.sending_chain_length,
        )
        + message.ciphertext
    )
