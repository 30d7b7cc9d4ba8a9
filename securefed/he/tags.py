"""Members-only linear tags over CKKS ciphertexts: a decryptor checks the sum it is handed.

For one attempt, every member derives from the federation's CKKS secret key (which the server never
holds) the same pseudorandom vector r, one entry per c0 coefficient, r_l < 2^(b_l - 1) < q_l for the
data prime q_l of b_l bits. A contributor's tag is, per prime, t_l = <r_l, c0_l> mod q_l over all of
its ciphertexts; it is sealed (ChaCha20-Poly1305 under a key only members can derive, bound to the
plan, the attempt and the contributor) and signed with the contributor's identity, so the server
sees neither r nor any tag. A decryptor handed a sum C and contributors S accepts only if
tag(C) = sum_{i in S} t_i (mod q_l) for every prime. The tag is linear, so the true sum passes; any
other C fixed without knowledge of r passes with probability at most 2^-(b_l - 1) per prime (the
argument is in protocols/ckks.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, Sequence

import numpy as np

from securefed.crypto.aead import decrypt_share, encrypt_share
from securefed.crypto.keys import derive_key
from securefed.crypto.prg import stream_at
from securefed.errors import CryptoError, InvalidInput
from securefed.he.params import CkksParams
from securefed.he.vector import unpack_coeffs

MEMBERS_KEY_DOMAIN: Final = b"securefed/ckks-members-key/v1\x00"
ATTEMPT_DOMAIN: Final = b"securefed/ckks-attempt/v1\x00"
TAG_SEAL_DOMAIN: Final = b"securefed/ckks-tag-seal/v1\x00"
PURPOSE_TAG_VECTOR: Final = b"securefed/ckks-tag-vector/v1"
PURPOSE_TAG_SEAL: Final = b"securefed/ckks-tag-seal/v1"
PURPOSE_FLOOD: Final = b"securefed/ckks-flood/v1"

_LIMB: Final = 30
_MASK: Final = np.uint64((1 << _LIMB) - 1)
_GROUP: Final = 4  # 4 products of < 2^61 each sum below 2^63: exact in u64
_BATCH: Final = 256  # ciphertexts per step: bounds the temporaries


def members_key(secret_key_coefficients: bytes) -> bytes:
    """A 32-byte key every holder of the federation's CKKS secret key derives, and nobody else."""
    if len(secret_key_coefficients) < 1024:
        raise InvalidInput("the CKKS secret key looks empty")
    return hashlib.sha256(MEMBERS_KEY_DOMAIN + bytes(secret_key_coefficients)).digest()


@dataclass(frozen=True, slots=True)
class AttemptKeys:
    """The members-only keys of one attempt: tag vector, tag sealing, decryption flooding noise."""

    vector: bytes
    seal: bytes
    flood: bytes

    @classmethod
    def derive(cls, members: bytes, plan_sha256: bytes, attempt: int) -> "AttemptKeys":
        sid = hashlib.sha256(ATTEMPT_DOMAIN + bytes(plan_sha256) + int(attempt).to_bytes(8, "big")).digest()
        return cls(*(derive_key(members, session_id=sid, purpose=p, party_a=0, party_b=0)
                     for p in (PURPOSE_TAG_VECTOR, PURPOSE_TAG_SEAL, PURPOSE_FLOOD)))


def _dot_mod(a: np.ndarray, r: np.ndarray, q: int) -> int:
    """sum(a * r) mod q exactly, for a < 2^60 and r < 2^59 (30-bit limbs, sums of 4 below 2^63)."""
    n = a.size
    pad = (-n) % _GROUP
    if pad:
        a = np.concatenate([a, np.zeros(pad, np.uint64)])
        r = np.concatenate([r, np.zeros(pad, np.uint64)])
    a0, a1 = a & _MASK, a >> np.uint64(_LIMB)
    r0, r1 = r & _MASK, r >> np.uint64(_LIMB)
    total = 0
    for shift, prod in ((0, a0 * r0), (_LIMB, a0 * r1 + a1 * r0), (2 * _LIMB, a1 * r1)):
        groups = prod.reshape(-1, _GROUP).sum(axis=1, dtype=np.uint64)
        hi = int((groups >> np.uint64(32)).sum(dtype=np.uint64))
        lo = int((groups & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64))
        total += ((hi << 32) + lo) << shift
    return total % q


def linear_tag(c0: bytes, params: CkksParams, primes: Sequence[int], vector_key: bytes) -> tuple[int, ...]:
    """Per data prime, <r, c0> mod q over every ciphertext of a packed c0 (he.vector)."""
    n, k, width = params.poly_modulus_degree, len(primes), params.coeff_bytes
    per = k * n * width
    if len(c0) % per:
        raise InvalidInput("packed c0 is not a whole number of ciphertexts")
    count = len(c0) // per
    shifts = np.asarray([65 - b for b in params.data_prime_bit_sizes], dtype=np.uint64).reshape(1, k, 1)
    stream = stream_at(vector_key)  # r for coefficient j is keystream word j: one stream, read in order
    tags = [0] * k
    view = memoryview(c0)
    for start in range(0, count, _BATCH):
        coeffs = unpack_coeffs(view[start * per : (start + _BATCH) * per], width, primes, n)
        words = np.frombuffer(stream.update(bytes(coeffs.size * 8)), dtype="<u8").reshape(coeffs.shape)
        r = words.astype(np.uint64, copy=False) >> shifts
        for l, q in enumerate(primes):
            tags[l] = (tags[l] + _dot_mod(coeffs[:, l, :].reshape(-1), r[:, l, :].reshape(-1), q)) % q
    return tuple(tags)


def sum_tags(tags: Sequence[Sequence[int]], primes: Sequence[int]) -> tuple[int, ...]:
    return tuple(sum(t[l] for t in tags) % q for l, q in enumerate(primes))


def _binding(plan_sha256: bytes, attempt: int, client: str) -> bytes:
    name = client.encode("utf-8")
    return hashlib.sha256(TAG_SEAL_DOMAIN + bytes(plan_sha256) + int(attempt).to_bytes(8, "big")
                          + len(name).to_bytes(2, "big") + name).digest()


def seal_tag(keys: AttemptKeys, tag: Sequence[int], *, plan_sha256: bytes, attempt: int, client: str) -> bytes:
    """The tag encrypted for members only, bound to this plan, attempt and contributor."""
    body = b"".join(int(t).to_bytes(8, "little") for t in tag)
    return encrypt_share(keys.seal, body, session_id=_binding(plan_sha256, attempt, client), sender=0, receiver=0)


def open_tag(keys: AttemptKeys, sealed: bytes, primes: Sequence[int], *, plan_sha256: bytes, attempt: int,
             client: str) -> tuple[int, ...]:
    """The contributor's tag; CryptoError if it was not sealed by a member for this plan, attempt, client."""
    body = decrypt_share(keys.seal, sealed, session_id=_binding(plan_sha256, attempt, client), sender=0, receiver=0)
    if len(body) != 8 * len(primes):
        raise CryptoError("tag decryption failed")
    tag = tuple(int.from_bytes(body[8 * l : 8 * l + 8], "little") for l in range(len(primes)))
    if any(t >= q for t, q in zip(tag, primes)):
        raise CryptoError("tag decryption failed")
    return tag
