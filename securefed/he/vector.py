"""What travels in CKKS mode: c0 coefficients, packed, and the seeds of c1.

A member's update of d reals is ``chunks_for(d)`` seeded symmetric ciphertexts (c0, c1 = PRNG(seed)),
each c0 being ``k`` RNS residues of N coefficients (NTT form) modulo the data primes q_1..q_k.

* ``EncryptedVector`` (member -> server): every c0 coefficient in ``coeff_bytes`` little-endian
  bytes (7 for a 56-bit prime: the upload is 7 bytes a parameter), then one 65-byte seed record per
  ciphertext (PRNG type, seed).
* ``EncryptedSum`` (server -> decryptor): the coefficient-wise sum of the c0s modulo q, packed the
  same way, and every contributor's seed records. The decryptor regenerates c1 of the sum from the
  seeds itself, so it downloads one c0, never N ciphertexts, and the server cannot alter c1.

Pure module (numpy only): sizes, shapes and ranges are checked here, on receipt, before anything
else looks at the bytes; SEAL validates again when a ciphertext is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securefed.errors import InvalidMessage
from securefed.he.params import CkksParams

# Upper bound on a vector's length, so a length field can never make us allocate without limit.
MAX_VECTOR_LENGTH = 1 << 30
SEED_RECORD_BYTES = 65  # PRNG type byte + 64-byte seed (he._seal)
PRNG_TYPES = frozenset({1, 2})  # SEAL's Blake2xb, SHAKE-256


def check_length(params: CkksParams, length: object) -> int:
    if isinstance(length, bool) or not isinstance(length, int):
        raise InvalidMessage("vector length must be an integer")
    if not 1 <= length <= MAX_VECTOR_LENGTH:
        raise InvalidMessage(f"vector length {length} is outside 1..{MAX_VECTOR_LENGTH}")
    return length


def c0_bytes(params: CkksParams, length: int) -> int:
    """Exact size of the packed c0 of a vector of ``length`` reals."""
    return params.chunks_for(length) * len(params.data_prime_bit_sizes) * params.poly_modulus_degree * params.coeff_bytes


def seeds_bytes(params: CkksParams, length: int) -> int:
    return params.chunks_for(length) * SEED_RECORD_BYTES


def pack_coeffs(coeffs: np.ndarray, width: int) -> bytes:
    """u64 coefficients (each < 2^(8 width)) as ``width`` little-endian bytes each."""
    words = np.ascontiguousarray(coeffs, dtype="<u8").reshape(-1)
    return words.view(np.uint8).reshape(-1, 8)[:, :width].tobytes()


def unpack_coeffs(data: bytes | memoryview, width: int, primes: Sequence[int], n: int) -> np.ndarray:
    """Packed coefficients -> u64 array of shape (ciphertexts, k, N); InvalidMessage unless every
    coefficient is reduced modulo its prime (a peer must not smuggle values >= q into a sum)."""
    k = len(primes)
    per = k * n * width
    if len(data) % per:
        raise InvalidMessage(f"packed CKKS coefficients: {len(data)} bytes is not a whole number of ciphertexts")
    count = len(data) // per
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
    words = np.zeros((raw.shape[0], 8), dtype=np.uint8)
    words[:, :width] = raw
    out = words.view("<u8").reshape(count, k, n).astype(np.uint64, copy=False)
    q = np.asarray(primes, dtype=np.uint64).reshape(1, k, 1)
    if count and bool((out >= q).any()):
        raise InvalidMessage("a CKKS coefficient is not reduced modulo its prime")
    return out


def check_seeds(data: bytes, count: int) -> bytes:
    if len(data) != count * SEED_RECORD_BYTES:
        raise InvalidMessage(f"seed records: {len(data)} bytes, expected {count * SEED_RECORD_BYTES}")
    types = np.frombuffer(data, dtype=np.uint8)[::SEED_RECORD_BYTES] if count else np.zeros(0, np.uint8)
    if not set(int(t) for t in np.unique(types)) <= PRNG_TYPES:
        raise InvalidMessage("a seed record names an unknown PRNG")
    return bytes(data)


def seed_records(data: bytes) -> list[bytes]:
    return [data[i : i + SEED_RECORD_BYTES] for i in range(0, len(data), SEED_RECORD_BYTES)]


@dataclass(frozen=True, slots=True)
class EncryptedVector:
    """``length`` reals under parameter set ``params_name``: packed c0 of every ciphertext, seed records."""

    params_name: str
    length: int
    c0: bytes
    seeds: bytes

    @classmethod
    def from_parts(cls, params: CkksParams, c0: bytes, seeds: bytes, length: int) -> "EncryptedVector":
        """Size checks (cheap); the coefficient range is checked where they are unpacked."""
        check_length(params, length)
        if not isinstance(c0, (bytes, bytearray, memoryview)) or not isinstance(seeds, (bytes, bytearray, memoryview)):
            raise InvalidMessage("CKKS contribution parts must be bytes")
        if len(c0) != c0_bytes(params, length):
            raise InvalidMessage(f"CKKS c0 is {len(c0)} bytes, a vector of length {length} needs {c0_bytes(params, length)}")
        return cls(params.name, length, bytes(c0), check_seeds(bytes(seeds), params.chunks_for(length)))

    @property
    def nbytes(self) -> int:
        return len(self.c0) + len(self.seeds)


@dataclass(frozen=True, slots=True)
class EncryptedSum:
    """The server's sum: packed c0 (mod q) and the seed records of each contributor, in order."""

    params_name: str
    length: int
    c0: bytes
    seeds: tuple[bytes, ...]

    @classmethod
    def from_parts(cls, params: CkksParams, c0: bytes, seeds: Sequence[bytes], length: int) -> "EncryptedSum":
        check_length(params, length)
        if len(c0) != c0_bytes(params, length):
            raise InvalidMessage(f"CKKS sum c0 is {len(c0)} bytes, a vector of length {length} needs {c0_bytes(params, length)}")
        if not 1 <= len(seeds) <= params.max_summands:
            raise InvalidMessage(f"a CKKS sum of {len(seeds)} contributions is outside 1..{params.max_summands}")
        count = params.chunks_for(length)
        return cls(params.name, length, bytes(c0), tuple(check_seeds(bytes(s), count) for s in seeds))

    @property
    def summands(self) -> int:
        return len(self.seeds)

    @property
    def nbytes(self) -> int:
        return len(self.c0) + sum(len(s) for s in self.seeds)
