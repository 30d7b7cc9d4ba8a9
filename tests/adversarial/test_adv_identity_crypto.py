"""Identity and share-encryption primitives under a network attacker or a malicious relay (server).

The server relays every client-to-client message, so it is the natural man in the middle: it can
substitute keys, flip bytes, replay into another session and re-route ciphertexts. These tests show
each of those is detected at the primitive the protocol relies on.
"""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto.aead import decrypt_share, encrypt_share
from securefed.crypto.keys import AgreementKeyPair, IdentityKeyPair, verify_signature, x25519_shared_secret
from securefed.errors import CryptoError

_ID = IdentityKeyPair.generate()
_MSG = b"securefed/advertise/v1" + secrets.token_bytes(96)
_SIG = _ID.sign(_MSG)


@settings(max_examples=200, deadline=None)
@given(which=st.sampled_from(["signature", "message", "public"]), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_single_bit_flip_in_a_signed_message_is_refused(which, pos, bit):
    parts = {"signature": bytearray(_SIG), "message": bytearray(_MSG), "public": bytearray(_ID.public_bytes())}
    target = parts[which]
    target[pos % len(target)] ^= 1 << bit
    with pytest.raises(CryptoError):
        verify_signature(bytes(parts["public"]), bytes(parts["signature"]), bytes(parts["message"]))


def test_a_signature_by_an_uncertified_identity_is_refused():
    impostor = IdentityKeyPair.generate()
    verify_signature(_ID.public_bytes(), _SIG, _MSG)  # the genuine one verifies
    with pytest.raises(CryptoError):
        verify_signature(_ID.public_bytes(), impostor.sign(_MSG), _MSG)
    with pytest.raises(CryptoError, match="signature verification failed"):
        verify_signature(_ID.public_bytes(), bytes(64), _MSG)


# Points of small order on Curve25519 (RFC 7748 / libsodium blocklist), little-endian encodings.
_LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 19 + 1).to_bytes(32, "little"),
]


@pytest.mark.parametrize("point", _LOW_ORDER, ids=[p.hex()[:8] for p in _LOW_ORDER])
def test_a_low_order_public_key_substituted_by_the_server_is_refused(point):
    # A small-order point would force the all-zero shared secret: a mask key the server knows.
    with pytest.raises(CryptoError):
        AgreementKeyPair.generate().exchange(point)
    with pytest.raises(CryptoError):
        x25519_shared_secret(secrets.token_bytes(32), point)


_KEY = secrets.token_bytes(32)
_SID = secrets.token_bytes(32)


def _ct() -> bytes:
    return encrypt_share(_KEY, b"share-of-b" + bytes(64), session_id=_SID, sender=3, receiver=7)


def test_an_encrypted_share_decrypts_only_for_its_session_and_direction():
    ct = _ct()
    assert decrypt_share(_KEY, ct, session_id=_SID, sender=3, receiver=7).startswith(b"share-of-b")
    attacks = {
        "re-routed to another receiver": dict(session_id=_SID, sender=3, receiver=8),
        "reflected back to the sender": dict(session_id=_SID, sender=7, receiver=3),
        "attributed to another sender": dict(session_id=_SID, sender=4, receiver=7),
        "replayed into another session": dict(session_id=secrets.token_bytes(32), sender=3, receiver=7),
    }
    for name, ad in attacks.items():
        with pytest.raises(CryptoError, match="share decryption failed"):
            decrypt_share(_KEY, ct, **ad)


@settings(max_examples=150, deadline=None)
@given(pos=st.integers(0, 10_000), bit=st.integers(0, 7), cut=st.integers(0, 200))
def test_a_tampered_or_truncated_share_ciphertext_is_refused(pos, bit, cut):
    ct = bytearray(_ct())
    flipped = bytearray(ct)
    flipped[pos % len(ct)] ^= 1 << bit
    with pytest.raises(CryptoError):
        decrypt_share(_KEY, bytes(flipped), session_id=_SID, sender=3, receiver=7)
    with pytest.raises(CryptoError):
        decrypt_share(_KEY, bytes(ct[: cut % len(ct)]), session_id=_SID, sender=3, receiver=7)
