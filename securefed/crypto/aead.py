"""Encryption of Shamir shares between two clients (relayed through the untrusted server).

ChaCha20-Poly1305 with a random 96-bit nonce prepended to the ciphertext. The associated data
binds the ciphertext to this session and to the (sender, receiver) direction, so the server can
neither replay a share into another round nor reflect it back or redirect it to another client.
Random nonces are fine here: a share-encryption key (HKDF per session and pair) encrypts only a
handful of messages, far below the 2^32 messages where 96-bit nonce collisions start to matter.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from securefed.crypto._checks import ensure, party_id_bytes, require_bytes
from securefed.errors import CryptoError

__all__ = ["AEAD", "KEY_SIZE", "NONCE_SIZE", "OVERHEAD", "TAG_SIZE", "decrypt_share", "encrypt_share"]

AEAD: Final = "ChaCha20-Poly1305"
KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
OVERHEAD: Final = NONCE_SIZE + TAG_SIZE  # ciphertext length = plaintext length + 28


def _associated_data(session_id: bytes, sender: int, receiver: int) -> bytes:
    # sender and receiver are fixed-width, so session_id || sender || receiver is unambiguous.
    sid = require_bytes(session_id, "session id", CryptoError)
    ensure(len(sid) > 0, "session id must not be empty", CryptoError)
    return sid + party_id_bytes(sender, "sender", CryptoError) + party_id_bytes(receiver, "receiver", CryptoError)


def encrypt_share(key: bytes, plaintext: bytes, *, session_id: bytes, sender: int, receiver: int) -> bytes:
    """nonce (12 B) || ChaCha20-Poly1305(key, nonce, plaintext, ad=session_id||sender||receiver)."""
    raw_key = require_bytes(key, "share-encryption key", CryptoError, size=KEY_SIZE)
    data = require_bytes(plaintext, "plaintext", CryptoError)
    ad = _associated_data(session_id, sender, receiver)
    nonce = os.urandom(NONCE_SIZE)
    return nonce + ChaCha20Poly1305(raw_key).encrypt(nonce, data, ad)


def decrypt_share(key: bytes, ciphertext: bytes, *, session_id: bytes, sender: int, receiver: int) -> bytes:
    """Inverse of :func:`encrypt_share`. Any failure (tampering, wrong key, wrong session or
    direction, truncation) is the same CryptoError, which does not say which check failed."""
    raw_key = require_bytes(key, "share-encryption key", CryptoError, size=KEY_SIZE)
    data = require_bytes(ciphertext, "ciphertext", CryptoError)
    ad = _associated_data(session_id, sender, receiver)
    if len(data) < OVERHEAD:
        raise CryptoError("share decryption failed")
    try:
        return ChaCha20Poly1305(raw_key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], ad)
    except InvalidTag:
        raise CryptoError("share decryption failed") from None
