"""Pin the primitives and constructions to published known-answer values."""

from __future__ import annotations

import pytest
from avclient_helpers import load_vectors

from agentvault_client.crypto import primitives as prim
from agentvault_client.crypto import ratchet, safety, x3dh
from agentvault_client.errors import (
    BadSignatureError,
    DecryptFailedError,
    InvalidKeyError,
    LowOrderKeyError,
)

h = bytes.fromhex


def _wycheproof_tests(name: str) -> list[tuple[dict, dict]]:
    data = load_vectors("wycheproof", name)
    return [(group, test) for group in data["testGroups"] for test in group["tests"]]


# -- X25519 -----------------------------------------------------------------


def test_x25519_matches_rfc7748_section_6_1() -> None:
    alice_private = h(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
    )
    bob_private = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_public = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_public = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

    assert prim.x25519_public(alice_private) == alice_public
    assert prim.x25519_public(bob_private) == bob_public
    assert prim.x25519(alice_private, bob_public) == shared
    assert prim.x25519(bob_private, alice_public) == shared


def test_x25519_matches_rfc7748_section_5_2() -> None:
    scalar = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    expected = h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert prim.x25519(scalar, u) == expected


def test_x25519_agrees_with_every_wycheproof_case_and_refuses_zero_results() -> None:
    zero_cases = 0
    for _group, test in _wycheproof_tests("x25519_test.json"):
        private, public = h(test["private"]), h(test["public"])
        shared = h(test["shared"])
        if shared == bytes(32):
            zero_cases += 1
            with pytest.raises(LowOrderKeyError) as info:
                prim.x25519(private, public)
            assert info.value.code == "low_order_key"
            continue
        assert test["result"] in ("valid", "acceptable")
        assert prim.x25519(private, public) == shared, test["tcId"]
    assert zero_cases > 0


def test_x25519_refuses_a_short_public_key_with_our_error() -> None:
    with pytest.raises(InvalidKeyError):
        prim.x25519(bytes(32), bytes(31))


# -- Ed25519 ----------------------------------------------------------------


def test_ed25519_matches_rfc8032_test_1_and_2() -> None:
    cases = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            (
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            ),
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            (
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
            ),
        ),
    ]
    for seed, public, message, signature in cases:
        assert prim.ed25519_public_from_seed(h(seed)) == h(public)
        assert prim.ed25519_sign(h(seed), h(message)) == h(signature)
        prim.ed25519_verify(h(public), h(message), h(signature))


def test_ed25519_verify_follows_every_wycheproof_verdict() -> None:
    for group, test in _wycheproof_tests("ed25519_test.json"):
        public = h(group["publicKey"]["pk"])
        message, signature = h(test["msg"]), h(test["sig"])
        if test["result"] == "valid":
            prim.ed25519_verify(public, message, signature)
        else:
            with pytest.raises(BadSignatureError):
                prim.ed25519_verify(public, message, signature)


def test_ed25519_to_x25519_conversion_matches_the_converted_private_key() -> None:
    seed = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = prim.ed25519_public_from_seed(seed)
    assert prim.ed25519_pk_to_x25519(public) == prim.x25519_public(
        prim.ed25519_seed_to_x25519(seed)
    )


def test_an_invalid_ed25519_key_gives_our_error_not_a_library_error() -> None:
    with pytest.raises(InvalidKeyError) as info:
        prim.ed25519_pk_to_x25519(bytes(32))
    assert info.value.code == "invalid_key"


# -- XChaCha20-Poly1305 -----------------------------------------------------


def test_xchacha20_poly1305_matches_draft_irtf_cfrg_xchacha_a_3_1() -> None:
    key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    nonce = h("404142434445464748494a4b4c4d4e4f5051525354555657")
    ad = h("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only "
        b"one tip for the future, sunscreen would be it."
    )
    sealed = prim.aead_encrypt(key, nonce, plaintext, ad)
    assert sealed[-16:] == h("c0875924c1c7987947deafd8780acf49")
    assert sealed[:16] == h("bd6d179d3e83d43b9576579493c0e939")
    assert prim.aead_decrypt(key, nonce, sealed, ad) == plaintext


def test_xchacha20_poly1305_follows_every_wycheproof_verdict() -> None:
    for _group, test in _wycheproof_tests("xchacha20_poly1305_test.json"):
        key, nonce, ad = h(test["key"]), h(test["iv"]), h(test["aad"])
        message, sealed = h(test["msg"]), h(test["ct"]) + h(test["tag"])
        if test["result"] == "valid":
            assert prim.aead_encrypt(key, nonce, message, ad) == sealed
            assert prim.aead_decrypt(key, nonce, sealed, ad) == message
        else:
            with pytest.raises(DecryptFailedError):
                prim.aead_decrypt(key, nonce, sealed, ad)


# -- HKDF-SHA256 ------------------------------------------------------------


def test_hkdf_matches_rfc5869_test_cases_1_and_3() -> None:
    ikm = b"\x0b" * 22
    okm1 = prim.hkdf_sha256(
        ikm,
        salt=h("000102030405060708090a0b0c"),
        info=h("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm1 == h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865"
    )
    okm3 = prim.hkdf_sha256(ikm, salt=b"", info=b"", length=42)
    assert okm3 == h(
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        "9d201395faa4b61a96c8"
    )


def test_hkdf_follows_every_wycheproof_verdict() -> None:
    for _group, test in _wycheproof_tests("hkdf_sha256_test.json"):
        args = {
            "salt": h(test["salt"]),
            "info": h(test["info"]),
            "length": test["size"],
        }
        if test["result"] == "valid":
            assert prim.hkdf_sha256(h(test["ikm"]), **args) == h(test["okm"])
        else:
            with pytest.raises(ValueError):
                prim.hkdf_sha256(h(test["ikm"]), **args)


# -- libsignal-derived constructions ----------------------------------------


def _signal_key(hex_key: str) -> bytes:
    raw = h(hex_key)
    assert len(raw) == 33 and raw[0] == 0x05
    return raw[1:]


def test_x3dh_derivation_matches_libsignal_on_both_sides() -> None:
    v = load_vectors("libsignal-derived.json")["x3dh_three_dh"]
    bob_identity = h(v["bob_identity_private"])
    bob_spk = h(v["bob_signed_prekey_private"])
    alice_identity = h(v["alice_identity_private"])
    alice_base = h(v["alice_base_private"])
    assert prim.x25519_public(alice_identity) == _signal_key(v["alice_identity_public"])
    assert prim.x25519_public(alice_base) == _signal_key(v["alice_base_public"])
    info = v["info"].encode("ascii")

    responder = x3dh.responder_dh_outputs(
        bob_identity,
        bob_spk,
        None,
        _signal_key(v["alice_identity_public"]),
        _signal_key(v["alice_base_public"]),
    )
    initiator = x3dh.initiator_dh_outputs(
        alice_identity,
        alice_base,
        prim.x25519_public(bob_identity),
        prim.x25519_public(bob_spk),
        None,
    )
    for outputs in (responder, initiator):
        secret = x3dh.derive_shared_secret(outputs, info=info, length=64)
        assert secret[:32] == h(v["root_key"])
        assert secret[32:] == h(v["chain_key"])


def test_chain_kdf_matches_libsignal() -> None:
    v = load_vectors("libsignal-derived.json")["chain_kdf"]
    seed, next_key = ratchet.kdf_ck(h(v["chain_key"]))
    assert next_key == h(v["next_chain_key"])
    expanded = prim.hkdf_sha256(
        seed, salt=None, info=v["message_keys_info"].encode("ascii"), length=80
    )
    assert expanded[:32] == h(v["message_cipher_key"])


def test_safety_number_construction_matches_libsignal() -> None:
    v = load_vectors("libsignal-derived.json")["safety_number"]
    local = safety.safety_number_half(
        h(v["local_key"]), v["local_id"].encode(), iterations=v["iterations"]
    )
    remote = safety.safety_number_half(
        h(v["remote_key"]), v["remote_id"].encode(), iterations=v["iterations"]
    )
    assert "".join(sorted((local, remote))) == v["displayable"]


def test_product_constants_differ_from_signal_labels() -> None:
    assert x3dh.X3DH_INFO == b"AgentVault_X3DH_X25519_SHA256_v1"
    assert ratchet.RATCHET_INFO == b"AgentVault_Ratchet_v1"
    assert ratchet.CHAIN_MESSAGE_KEY == b"\x01"
    assert ratchet.CHAIN_NEXT_KEY == b"\x02"
    assert ratchet.MAX_SKIP == 1000
    assert ratchet.MAX_SKIPPED_KEYS == 2000
