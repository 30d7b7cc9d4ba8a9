"""Large payloads as a sequence of ``Chunk`` messages, and their checked reassembly.

The sender splits a payload into CHUNK_BYTES slices with contiguous offsets; the final chunk
carries the SHA-256 of the whole payload. The receiver refuses anything out of order, oversized,
inconsistent or with a wrong digest, with InvalidMessage, before it is used. The digest guards
reassembly bugs and truncation, not an attacker (TLS already authenticates the stream).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterator

from securefed.errors import InvalidMessage
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.limits import CHUNK_BYTES, MAX_PAYLOAD_BYTES


def split_payload(payload: bytes | bytearray | memoryview, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """Yield Chunk messages covering payload; an empty payload is one empty final chunk."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise InvalidMessage(f"chunk size must be in 1..{CHUNK_BYTES} bytes, got {chunk_bytes}")
    view = memoryview(payload).cast("B")
    total = len(view)
    if total > MAX_PAYLOAD_BYTES:
        raise InvalidMessage(f"payload of {total} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    digest = hashlib.sha256(view).digest()
    offset = 0
    while True:
        end = min(offset + chunk_bytes, total)
        last = end == total
        yield pb.Chunk(offset=offset, total_size=total, data=bytes(view[offset:end]), sha256=digest if last else b"")
        if last:
            return
        offset = end


class ChunkAssembler:
    """Reassemble one payload from Chunk messages, validating as they arrive.

    expected_size, when the plan fixes it (vector_length * word size), must match every chunk's
    total_size; max_size bounds what a peer can make us buffer.
    """

    def __init__(self, *, expected_size: int | None = None, max_size: int = MAX_PAYLOAD_BYTES) -> None:
        if expected_size is not None and not 0 <= expected_size <= max_size:
            raise InvalidMessage(f"expected payload size {expected_size} is outside 0..{max_size}")
        self._expected = expected_size
        self._max = max_size
        self._total: int | None = None
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def add(self, chunk: pb.Chunk) -> bool:
        """Take the next chunk; True once the payload is complete and its digest verified."""
        if self._done:
            raise InvalidMessage("chunk received after the final chunk")
        total = chunk.total_size
        if self._total is None:
            if total > self._max:
                raise InvalidMessage(f"payload of {total} bytes exceeds the {self._max}-byte limit")
            if self._expected is not None and total != self._expected:
                raise InvalidMessage(f"payload is {total} bytes, the round expects {self._expected}")
            self._total = total
        elif total != self._total:
            raise InvalidMessage("chunk total_size changed within one payload")
        if chunk.offset != len(self._buf):
            raise InvalidMessage(f"chunk at offset {chunk.offset}, expected {len(self._buf)} (out of order or missing)")
        if len(chunk.data) > CHUNK_BYTES:
            raise InvalidMessage(f"chunk of {len(chunk.data)} bytes exceeds {CHUNK_BYTES}")
        end = len(self._buf) + len(chunk.data)
        if end > total:
            raise InvalidMessage("chunk runs past the declared payload size")
        self._buf += chunk.data
        self._hash.update(chunk.data)
        if end < total:
            if chunk.sha256:
                raise InvalidMessage("digest sent before the final chunk")
            return False
        if not hmac.compare_digest(chunk.sha256, self._hash.digest()):
            raise InvalidMessage("payload digest does not match its chunks")
        self._done = True
        return True

    def payload(self) -> bytes:
        if not self._done:
            raise InvalidMessage("payload is incomplete: the final chunk never arrived")
        return bytes(self._buf)
