"""EncryptedVector: a client's encrypted update as a list of wire chunks (one ciphertext each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from securefed.errors import InvalidMessage
from securefed.he import wire
from securefed.he.params import CkksParams

# Upper bound on a vector's length, so a length field can never make us allocate without limit.
MAX_VECTOR_LENGTH = 1 << 30


def check_length(params: CkksParams, length: object) -> int:
    if isinstance(length, bool) or not isinstance(length, int):
        raise InvalidMessage("vector length must be an integer")
    if not 1 <= length <= MAX_VECTOR_LENGTH:
        raise InvalidMessage(f"vector length {length} is outside 1..{MAX_VECTOR_LENGTH}")
    return length


def check_chunks(params: CkksParams, chunks: Sequence[bytes], length: int) -> tuple[bytes, ...]:
    """Count and size checks only (cheap); cryptographic validation happens on deserialization."""
    check_length(params, length)
    if isinstance(chunks, (bytes, bytearray, str)):
        raise InvalidMessage("chunks must be a sequence of bytes objects, not one bytes object")
    try:
        items = tuple(chunks)
    except TypeError:
        raise InvalidMessage("chunks must be a sequence of bytes objects") from None
    expected = params.chunks_for(length)
    if len(items) != expected:
        raise InvalidMessage(
            f"expected {expected} ciphertext chunks for a vector of length {length}, got {len(items)}"
        )
    limit = wire.max_blob_bytes(params.poly_modulus_degree, len(params.data_prime_bit_sizes))
    out = []
    for i, c in enumerate(items):
        if not isinstance(c, (bytes, bytearray, memoryview)):
            raise InvalidMessage(f"chunk {i} is not bytes")
        if len(c) > limit:
            raise InvalidMessage(f"chunk {i} of {len(c)} bytes exceeds the limit of {limit}")
        out.append(bytes(c))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class EncryptedVector:
    """``length`` reals encrypted under parameter set ``params_name`` as ``chunks`` (wire bytes)."""

    params_name: str
    length: int
    chunks: tuple[bytes, ...]

    def to_chunks(self) -> list[bytes]:
        return list(self.chunks)

    @classmethod
    def from_chunks(cls, params: CkksParams, chunks: Sequence[bytes], length: int) -> "EncryptedVector":
        return cls(params.name, length, check_chunks(params, chunks, length))

    def to_bytes(self) -> bytes:
        """All chunks in one length-prefixed container (the vector length travels separately)."""
        return wire.pack_chunks(self.chunks)

    @classmethod
    def from_bytes(cls, params: CkksParams, data: bytes, length: int) -> "EncryptedVector":
        check_length(params, length)
        chunks = wire.unpack_chunks(
            data,
            max_chunks=params.chunks_for(length),
            max_chunk_bytes=wire.max_blob_bytes(
                params.poly_modulus_degree, len(params.data_prime_bit_sizes)
            ),
        )
        return cls.from_chunks(params, chunks, length)

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)
