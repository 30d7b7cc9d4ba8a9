"""securefed.crypto.aead: known ciphertexts, one-byte tampering, context binding."""

from __future__ import annotations

import secrets

import pytest
from conftest import json_parametrize, load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto.aead import NONCE_SIZE, OVERHEAD, decrypt_share, encrypt_share
from securefed.errors import CryptoError

BASE = load_vectors("aead", "verify")[0]


@json_parametrize("aead", "verify")
def test_decrypts_known_ciphertexts(vector):
    plaintext = decrypt_share(
        bytes.fromhex(vector["key"]),
        bytes.fromhex(vector["ciphertext"]),
        session_id=bytes.fromhex(vector["session_id"]),
        sender=vector["sender"],
        receiver=vector["receiver"],
    )
    assert plaintext.hex() == vector["plaintext"]


def _mutate(vector: dict, mutation: str, index: int) -> tuple[bytes, bytes, bytes, int, int]:
    key, ct = bytes.fromhex(vector["key"]), bytearray(bytes.fromhex(vector["ciphertext"]))
    sid, sender, receiver = bytes.fromhex(vector["session_id"]), vector["sender"], vector["receiver"]
    if mutation == "flip":
        ct[index] ^= 0x01
    elif mutation == "truncate":
        del ct[index:]
    elif mutation == "append":
        ct.append(0)
    elif mutation == "key":
        key = bytes([key[0] ^ 1]) + key[1:]
    elif mutation == "session":
        sid = bytes([sid[0] ^ 1]) + sid[1:]
    elif mutation == "swap":
        sender, receiver = receiver, sender
    elif mutation == "receiver":
        receiver += 1
    else:  # pragma: no cover - a typo in the vector file
        raise AssertionError(mutation)
    return key, bytes(ct), sid, sender, receiver


@json_parametrize("aead", "invalid")
def test_any_tampering_is_one_indistinct_error(vector):
    key, ct, sid, sender, receiver = _mutate(BASE, vector["mutation"], vector["index"])
    with pytest.raises(CryptoError) as excinfo:
        decrypt_share(key, ct, session_id=sid, sender=sender, receiver=receiver)
    assert str(excinfo.value) == "share decryption failed"  # says that, not which, check failed


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=200), data=st.data())
def test_every_single_byte_flip_is_detected(plaintext, data):
    key, sid = secrets.token_bytes(32), secrets.token_bytes(32)
    ct = encrypt_share(key, plaintext, session_id=sid, sender=1, receiver=2)
    assert len(ct) == len(plaintext) + OVERHEAD
    assert decrypt_share(key, ct, session_id=sid, sender=1, receiver=2) == plaintext
    position = data.draw(st.integers(0, len(ct) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(ct)
    bad[position] ^= 1 << bit
    with pytest.raises(CryptoError):
        decrypt_share(key, bytes(bad), session_id=sid, sender=1, receiver=2)


def test_nonces_are_random():
    key, sid = secrets.token_bytes(32), secrets.token_bytes(32)
    a = encrypt_share(key, b"same", session_id=sid, sender=1, receiver=2)
    b = encrypt_share(key, b"same", session_id=sid, sender=1, receiver=2)
    assert a[:NONCE_SIZE] != b[:NONCE_SIZE] and a != b


@pytest.mark.parametrize("bad_key", [b"", b"\x00" * 16, b"\x00" * 31, b"\x00" * 33, "k" * 32])
def test_wrong_key_length_is_crypto_error(bad_key):
    with pytest.raises(CryptoError):
        encrypt_share(bad_key, b"x", session_id=b"s" * 32, sender=1, receiver=2)
    with pytest.raises(CryptoError):
        decrypt_share(bad_key, bytes(40), session_id=b"s" * 32, sender=1, receiver=2)


@pytest.mark.parametrize(
    "kwargs",
    [{"session_id": b""}, {"session_id": "sid"}, {"sender": -1}, {"receiver": 2**64}, {"sender": None}],
)
def test_bad_context_is_crypto_error(kwargs):
    args = {"session_id": b"s" * 32, "sender": 1, "receiver": 2}
    args.update(kwargs)
    with pytest.raises(CryptoError):
        encrypt_share(b"\x01" * 32, b"x", **args)
