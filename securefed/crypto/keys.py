"""X25519 round keys, Ed25519 identity keys and HKDF-SHA256 key derivation.

Every key crosses this module as raw ``bytes``; lengths are checked before the primitive is
touched and every failure is a :class:`~securefed.errors.CryptoError` that says *that* a check
failed, never which internal step.
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefed.crypto._checks import ensure, party_id_bytes, require_bytes, require_int
from securefed.errors import CryptoError

__all__ = [
    "ED25519_PRIVATE_SIZE",
    "ED25519_PUBLIC_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "HKDF_MAX_LENGTH",
    "PURPOSE_MASK",
    "PURPOSE_SHARE_ENCRYPTION",
    "SESSION_ID_SIZE",
    "X25519_KEY_SIZE",
    "AgreementKeyPair",
    "IdentityKeyPair",
    "derive_key",
    "is_low_order",
    "verify_signature",
    "x25519_shared_secret",
]

X25519_KEY_SIZE = 32
ED25519_PRIVATE_SIZE = 32
ED25519_PUBLIC_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
HKDF_MAX_LENGTH = 255 * 32  # RFC 5869: L <= 255 * HashLen
# Session ids are SHA-256 digests. A fixed length also matters for HKDF: HMAC zero-pads short
# keys, so salts that differ only by trailing zero bytes (b"\x00" vs b"\x00\x00") would collide.
SESSION_ID_SIZE = 32

PURPOSE_MASK = b"securefed/mask/v1"
# v2: shares are encrypted under the receiver's per-sender inbox key (secagg.attribution), not its c_pk.
PURPOSE_SHARE_ENCRYPTION = b"securefed/share-enc/v2"

_ALL_ZERO = bytes(X25519_KEY_SIZE)
_P = 2**255 - 19
# u-coordinates of the points of order 1, 2, 4 and 8 on Curve25519 and its twist (RFC 7748 section 6.1;
# the list libsodium refuses): 0, 1, p - 1 and the two points of order 8.
_LOW_ORDER_U = frozenset({0, 1, _P - 1,
                          325606250916557431795983626356110631294008115727848805560023387167927233504,
                          39382357235489614581723060781553021112529911719440698176882885853963445705823})


def is_low_order(public: bytes) -> bool:
    """Whether an X25519 public key is a point of small order (in any of its encodings): every clamped
    scalar maps it to the all-zero output. A check without a key agreement, for keys nobody on this
    side agrees with (tests cross-check it against ``x25519_shared_secret``)."""
    pub = require_bytes(public, "X25519 public key", CryptoError, size=X25519_KEY_SIZE)
    u = int.from_bytes(pub, "little") & ((1 << 255) - 1)  # RFC 7748: the top bit is ignored
    return u % _P in _LOW_ORDER_U


def x25519_shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """X25519(private, peer_public) as 32 bytes.

    Raises CryptoError on wrong lengths and when the peer's point has small order: clamping makes
    every scalar a multiple of 8, so any point of order 1, 2, 4 or 8 (including non-canonical
    encodings of them) yields the all-zero output, which would let a malicious peer force a known
    key (RFC 7748 section 6.1).
    """
    priv = require_bytes(private, "X25519 private key", CryptoError, size=X25519_KEY_SIZE)
    pub = require_bytes(peer_public, "X25519 peer public key", CryptoError, size=X25519_KEY_SIZE)
    try:
        shared = X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))
    except (ValueError, UnsupportedAlgorithm):
        # OpenSSL already refuses an all-zero result; report it the same way as our own check.
        raise CryptoError("X25519 key agreement failed: peer public key rejected") from None
    # Checked again explicitly (constant time) so we do not depend on the backend's behaviour.
    if hmac.compare_digest(shared, _ALL_ZERO):
        raise CryptoError("X25519 key agreement failed: peer public key rejected")
    return shared


class AgreementKeyPair:
    """An X25519 key pair; generate a fresh one for every round."""

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey) -> None:
        ensure(isinstance(private, X25519PrivateKey), "expected an X25519PrivateKey", CryptoError)
        self._private = private

    @classmethod
    def generate(cls) -> AgreementKeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, b: bytes) -> AgreementKeyPair:
        raw = require_bytes(b, "X25519 private key", CryptoError, size=X25519_KEY_SIZE)
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes_raw()

    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        """32-byte shared secret with ``peer_public``; CryptoError on a bad or low-order key."""
        return x25519_shared_secret(self.private_bytes(), peer_public)

    def __repr__(self) -> str:  # never print the private key
        return f"AgreementKeyPair(public={self.public_bytes().hex()})"


class IdentityKeyPair:
    """A long-lived Ed25519 signing key (a client's or the server's identity)."""

    __slots__ = ("_private",)

    def __init__(self, private: Ed25519PrivateKey) -> None:
        ensure(isinstance(private, Ed25519PrivateKey), "expected an Ed25519PrivateKey", CryptoError)
        self._private = private

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, b: bytes) -> IdentityKeyPair:
        raw = require_bytes(b, "Ed25519 private key", CryptoError, size=ED25519_PRIVATE_SIZE)
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes_raw()

    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature over ``message``."""
        return self._private.sign(require_bytes(message, "message", CryptoError))

    def __repr__(self) -> str:
        return f"IdentityKeyPair(public={self.public_bytes().hex()})"


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Return None if ``signature`` is a valid Ed25519 signature, else raise CryptoError."""
    pub = require_bytes(public_key, "Ed25519 public key", CryptoError, size=ED25519_PUBLIC_SIZE)
    sig = require_bytes(signature, "Ed25519 signature", CryptoError, size=ED25519_SIGNATURE_SIZE)
    msg = require_bytes(message, "message", CryptoError)
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        raise CryptoError("signature verification failed") from None


def _hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (extract-then-expand); tested against RFC 5869 case 1."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_key(
    shared_secret: bytes,
    *,
    session_id: bytes,
    purpose: bytes,
    party_a: int,
    party_b: int,
    length: int = 32,
) -> bytes:
    """HKDF-SHA256(ikm=shared_secret, salt=session_id, info=purpose || min(a,b) || max(a,b)).

    Ids are 8-byte big-endian and ordered so both ends derive the same key. The session id (a
    32-byte digest, SESSION_ID_SIZE) as salt makes every round's keys independent even if a
    shared secret repeated. Use a different ``purpose`` (PURPOSE_MASK, PURPOSE_SHARE_ENCRYPTION)
    for every use of one secret.
    """
    ikm = require_bytes(shared_secret, "shared secret", CryptoError, size=X25519_KEY_SIZE)
    salt = require_bytes(session_id, "session id", CryptoError, size=SESSION_ID_SIZE)
    label = require_bytes(purpose, "purpose", CryptoError)
    ensure(len(label) > 0, "purpose must not be empty", CryptoError)
    a = require_int(party_a, "party_a", CryptoError, lo=0, hi=2**64 - 1)
    b = require_int(party_b, "party_b", CryptoError, lo=0, hi=2**64 - 1)
    n = require_int(length, "length", CryptoError, lo=1, hi=HKDF_MAX_LENGTH)
    lo_id, hi_id = min(a, b), max(a, b)
    info = label + party_id_bytes(lo_id, "party id", CryptoError) + party_id_bytes(hi_id, "party id", CryptoError)
    return _hkdf_sha256(ikm, salt=salt, info=info, length=n)
