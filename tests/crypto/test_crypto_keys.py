"""securefed.crypto.keys: RFC 7748 / RFC 8032 / RFC 5869 vectors, low-order rejection, HKDF binding."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from conftest import json_parametrize
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto import keys
from securefed.crypto.keys import (
    PURPOSE_MASK,
    PURPOSE_SHARE_ENCRYPTION,
    AgreementKeyPair,
    IdentityKeyPair,
    derive_key,
    verify_signature,
    x25519_shared_secret,
)
from securefed.errors import CryptoError

SID = b"\x5a" * 32


# ---------------------------------------------------------------- X25519
@json_parametrize("x25519", "verify")
def test_x25519_rfc7748_vectors(vector):
    scalar, u, expected = (bytes.fromhex(vector[k]) for k in ("scalar", "u", "output"))
    assert x25519_shared_secret(scalar, u) == expected
    assert AgreementKeyPair.from_private_bytes(scalar).exchange(u) == expected


@json_parametrize("x25519", "generate")
def test_x25519_rfc7748_public_keys(vector):
    pair = AgreementKeyPair.from_private_bytes(bytes.fromhex(vector["private"]))
    assert pair.public_bytes().hex() == vector["public"]
    assert pair.private_bytes().hex() == vector["private"]


@json_parametrize("x25519", "invalid")
def test_x25519_rejects_low_order_and_bad_lengths(vector):
    peer = bytes.fromhex(vector["public"])
    pair = AgreementKeyPair.generate()
    with pytest.raises(CryptoError):
        pair.exchange(peer)
    with pytest.raises(CryptoError):
        x25519_shared_secret(pair.private_bytes(), peer)


def test_all_zero_secret_rejected_even_if_backend_returns_it(monkeypatch):
    """Our own constant-time all-zero check, independent of OpenSSL's refusal."""

    class _ZeroPeer:
        @staticmethod
        def from_public_bytes(_b):
            return object()

    class _ZeroPrivate:
        @staticmethod
        def from_private_bytes(_b):
            return _ZeroPrivate()

        def exchange(self, _peer):
            return bytes(32)

    monkeypatch.setattr(keys, "X25519PrivateKey", _ZeroPrivate)
    monkeypatch.setattr(keys, "X25519PublicKey", _ZeroPeer)
    with pytest.raises(CryptoError, match="rejected"):
        x25519_shared_secret(bytes(range(32)), bytes(range(32)))


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, "a" * 32, 12345])
def test_x25519_private_key_length_and_type(bad):
    with pytest.raises(CryptoError):
        AgreementKeyPair.from_private_bytes(bad)
    with pytest.raises(CryptoError):
        x25519_shared_secret(bad, AgreementKeyPair.generate().public_bytes())


def test_x25519_agreement_is_symmetric_and_fresh():
    a, b = AgreementKeyPair.generate(), AgreementKeyPair.generate()
    assert a.exchange(b.public_bytes()) == b.exchange(a.public_bytes())
    assert len(a.public_bytes()) == keys.X25519_KEY_SIZE
    assert a.private_bytes() != b.private_bytes()
    assert a.private_bytes().hex() not in repr(a)


# ---------------------------------------------------------------- Ed25519
@json_parametrize("ed25519", "verify")
def test_ed25519_rfc8032_vectors(vector):
    pair = IdentityKeyPair.from_private_bytes(bytes.fromhex(vector["secret"]))
    message = bytes.fromhex(vector["message"])
    assert pair.public_bytes().hex() == vector["public"]
    signature = pair.sign(message)
    assert signature.hex() == vector["signature"]  # Ed25519 is deterministic
    assert len(signature) == keys.ED25519_SIGNATURE_SIZE
    verify_signature(bytes.fromhex(vector["public"]), signature, message)


@json_parametrize("ed25519", "invalid")
def test_ed25519_rejects_tampering(vector):
    with pytest.raises(CryptoError):
        verify_signature(
            bytes.fromhex(vector["public"]), bytes.fromhex(vector["signature"]), bytes.fromhex(vector["message"])
        )


def test_ed25519_bad_private_key_length():
    with pytest.raises(CryptoError):
        IdentityKeyPair.from_private_bytes(b"\x00" * 31)


@settings(max_examples=25, deadline=None)
@given(message=st.binary(max_size=256), position=st.integers(min_value=0, max_value=63), bit=st.integers(0, 7))
def test_ed25519_any_signature_bit_flip_fails(message, position, bit):
    pair = IdentityKeyPair.generate()
    signature = bytearray(pair.sign(message))
    verify_signature(pair.public_bytes(), bytes(signature), message)
    signature[position] ^= 1 << bit
    with pytest.raises(CryptoError, match="^signature verification failed$"):
        verify_signature(pair.public_bytes(), bytes(signature), message)


# ---------------------------------------------------------------- HKDF / derive_key
@json_parametrize("hkdf", "verify")
def test_hkdf_rfc5869_vectors(vector):
    okm = keys._hkdf_sha256(
        bytes.fromhex(vector["ikm"]),
        salt=bytes.fromhex(vector["salt"]),
        info=bytes.fromhex(vector["info"]),
        length=vector["length"],
    )
    assert okm.hex() == vector["okm"]


def _manual_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out with hmac, independent of `cryptography`."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@pytest.mark.parametrize("purpose", [PURPOSE_MASK, PURPOSE_SHARE_ENCRYPTION])
@pytest.mark.parametrize(("a", "b", "length"), [(1, 2, 32), (7, 3, 44), (0, 2**64 - 1, 64)])
def test_derive_key_matches_manual_hkdf(purpose, a, b, length):
    secret = bytes(range(32))
    info = purpose + min(a, b).to_bytes(8, "big") + max(a, b).to_bytes(8, "big")
    expected = _manual_hkdf(secret, SID, info, length)
    assert derive_key(secret, session_id=SID, purpose=purpose, party_a=a, party_b=b, length=length) == expected


@settings(max_examples=30, deadline=None)
@given(a=st.integers(0, 2**64 - 1), b=st.integers(0, 2**64 - 1), sid=st.binary(min_size=32, max_size=32))
def test_derive_key_order_independent_and_purpose_separated(a, b, sid):
    secret = b"\x11" * 32
    k_ab = derive_key(secret, session_id=sid, purpose=PURPOSE_MASK, party_a=a, party_b=b)
    assert k_ab == derive_key(secret, session_id=sid, purpose=PURPOSE_MASK, party_a=b, party_b=a)
    assert k_ab != derive_key(secret, session_id=sid, purpose=PURPOSE_SHARE_ENCRYPTION, party_a=a, party_b=b)
    other_sid = bytes([sid[0] ^ 1]) + sid[1:]
    assert k_ab != derive_key(secret, session_id=other_sid, purpose=PURPOSE_MASK, party_a=a, party_b=b)


def test_derive_key_binds_both_parties():
    secret = b"\x22" * 32
    base = derive_key(secret, session_id=SID, purpose=PURPOSE_MASK, party_a=1, party_b=2)
    assert base != derive_key(secret, session_id=SID, purpose=PURPOSE_MASK, party_a=1, party_b=3)
    assert base != derive_key(secret, session_id=SID, purpose=PURPOSE_MASK, party_a=3, party_b=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shared_secret": b"\x00" * 31},
        {"session_id": b""},
        {"session_id": b"\x00" * 31},
        {"session_id": b"\x00" * 33},
        {"session_id": "text"},
        {"purpose": b""},
        {"party_a": -1},
        {"party_b": 2**64},
        {"party_a": True},
        {"length": 0},
        {"length": 255 * 32 + 1},
    ],
)
def test_derive_key_rejects_bad_input(kwargs):
    args = {"shared_secret": b"\x01" * 32, "session_id": SID, "purpose": PURPOSE_MASK, "party_a": 1, "party_b": 2}
    args.update(kwargs)
    secret = args.pop("shared_secret")
    with pytest.raises(CryptoError):
        derive_key(secret, **args)


def test_is_low_order_agrees_with_the_key_agreement():
    """The server's cheap check of inbox keys (no key agreement) flags exactly the points every clamped
    scalar sends to zero: each low-order u in every encoding (reduced or not, top bit set or not), and no
    honest key."""
    from securefed.crypto.keys import _LOW_ORDER_U, _P, is_low_order

    probe = AgreementKeyPair.generate()
    for u in _LOW_ORDER_U:
        for v in (u, u + _P):
            for top in (0, 1 << 255):
                if v >= 1 << 255:
                    continue
                enc = (v | top).to_bytes(32, "little")
                assert is_low_order(enc)
                with pytest.raises(CryptoError):
                    x25519_shared_secret(probe.private_bytes(), enc)
    for _ in range(200):
        pub = AgreementKeyPair.generate().public_bytes()
        assert not is_low_order(pub)
        x25519_shared_secret(probe.private_bytes(), pub)
