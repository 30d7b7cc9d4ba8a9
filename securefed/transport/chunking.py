"""Payloads moved in chunks and resumable from any acknowledged offset: slices and codecs for the sender,
checked assembly for the receiver.

A transfer is an ordered list of *parts* (one for a ring vector or an adapter bundle, one per
ciphertext under CKKS) whose sizes are declared up front, with one SHA-256 over the parts
concatenated in order. Offsets count bytes of that concatenation, so where a dropped transfer
resumes is one number (protocols/transfers.md).

* ``PartsReceiver`` writes each chunk at its committed offset, trims a chunk that starts before it
  (a resumed sender repeats what was in flight), refuses one that starts after it, and checks the
  digest once the last byte is in. Memory follows what arrived, never what a peer declared, and the
  buffers are handed over as they are: the whole payload is never copied.
* ``slices`` and ``part_slices`` cut parts into memoryviews from an offset, without copying.
* The two hot messages, ``TransferChunk`` and ``AggregateChunk``, are encoded and decoded here by
  hand, so a chunk's bytes are copied once on each side (into the message, into the buffer) rather
  than three times through the protobuf runtime (upb copies on construction, on serialisation and
  on every read of a bytes field). The decoders are stricter than protobuf (a repeated or mistyped
  field is refused); tests/transport checks both codecs against the runtime, fuzzed input included.

The digest guards reassembly bugs, truncation and a sender resuming other content, not an attacker
(TLS authenticates the stream).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from securefed.errors import InvalidMessage
from securefed.transport.limits import CHUNK_BYTES, MAX_PAYLOAD_BYTES, MAX_TRANSFER_PARTS

Buffer = Union[bytes, bytearray, memoryview]

TRANSFER_ID_DOMAIN = b"securefed/transfer-id/v1\x00"
DIGEST_BYTES = 32
LARGE_PART = 1 << 20  # parts this big get an exact-size buffer whose pages arrive with the bytes


# ---- parts, digests, ids ----------------------------------------------------------------------------

def check_part_sizes(sizes: Sequence[int], *, max_bytes: int = MAX_PAYLOAD_BYTES,
                     max_parts: int = MAX_TRANSFER_PARTS) -> tuple[int, ...]:
    """The declared sizes, once their count and total are within bounds."""
    if not 1 <= len(sizes) <= max_parts:
        raise InvalidMessage(f"a transfer has 1..{max_parts} parts, this one declares {len(sizes)}")
    out = tuple(int(n) for n in sizes)
    total = sum(out)
    if min(out) < 0 or total > max_bytes:
        raise InvalidMessage(f"a transfer of {total} bytes exceeds the {max_bytes}-byte limit")
    return out


def views(parts: Sequence[Buffer]) -> list[memoryview]:
    """Byte views of the parts (no copy)."""
    return [memoryview(p).cast("B") for p in parts]


def content_digest(parts: Sequence[Buffer]) -> bytes:
    """SHA-256 of the parts concatenated in order (their sizes are bound separately)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def transfer_id(member: str, attempt: int, stage: int, kind: int, ring_bits: int, part_sizes: Sequence[int],
                sha256: bytes) -> bytes:
    """The name of one declared upload: the same declaration always names the same transfer."""
    name = member.encode("utf-8")
    h = hashlib.sha256(TRANSFER_ID_DOMAIN)
    h.update(len(name).to_bytes(2, "big") + name)
    h.update(b"".join(int(v).to_bytes(8, "big") for v in (attempt, stage, kind, ring_bits, len(part_sizes))))
    h.update(b"".join(int(n).to_bytes(8, "big") for n in part_sizes))
    h.update(sha256)
    return h.digest()


# ---- the receiving side ------------------------------------------------------------------------------

class PartsReceiver:
    """Assemble declared parts from chunks at global offsets; resumable at ``committed``.

    A part of ``LARGE_PART`` bytes or more is one uninitialised numpy buffer of its exact size, whose
    pages the OS provides only as bytes are written (no zero fill, no reallocation, no over-allocation),
    handed over as a ``memoryview``; a smaller one (a CKKS ciphertext, a manifest) grows as a
    ``bytearray``. Either way memory follows the bytes received, not the bytes declared.
    """

    def __init__(self, part_sizes: Sequence[int], sha256: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES,
                 max_parts: int = MAX_TRANSFER_PARTS) -> None:
        self.sizes = check_part_sizes(part_sizes, max_bytes=max_bytes, max_parts=max_parts)
        if len(sha256) != DIGEST_BYTES:
            raise InvalidMessage("a transfer's digest must be 32 bytes (SHA-256)")
        self.sha256 = bytes(sha256)
        self.total = sum(self.sizes)
        self.committed = 0
        self.failed = False
        self._parts: list[bytearray | memoryview] = []
        self._have = 0  # bytes in the part being filled (the last one opened)
        self._hash = hashlib.sha256()
        self._open_parts()
        if self.total == 0:
            self._verify()

    @property
    def complete(self) -> bool:
        """Every byte in and the digest verified."""
        return self.committed == self.total and not self.failed

    def write(self, offset: int, data: Buffer) -> int:
        """Take ``data`` at ``offset``; returns how many bytes were new (0 for a pure repeat)."""
        view = memoryview(data).cast("B")
        if self.failed:
            raise InvalidMessage("transfer already failed its digest check")
        if self.complete:
            raise InvalidMessage("data after the transfer's last byte")
        if len(view) > CHUNK_BYTES:
            raise InvalidMessage(f"chunk of {len(view)} bytes exceeds {CHUNK_BYTES}")
        if offset > self.committed:
            raise InvalidMessage(f"chunk at offset {offset}, expected at most {self.committed} (a gap)")
        end = offset + len(view)
        if end > self.total:
            raise InvalidMessage("chunk runs past the declared size")
        if end <= self.committed:
            return 0
        view = view[self.committed - offset:]
        self._hash.update(view)
        taken = len(view)
        while len(view):
            buf, size = self._parts[-1], self.sizes[len(self._parts) - 1]
            take = view[:size - self._have]
            if isinstance(buf, bytearray):
                buf += take
            else:
                buf[self._have:self._have + len(take)] = take
            self._have += len(take)
            view = view[len(take):]
            self._open_parts()
        self.committed += taken
        if self.complete:
            self._verify()
        return taken

    def parts(self) -> list[bytearray | memoryview]:
        if not self.complete:
            raise InvalidMessage(f"transfer incomplete: {self.committed} of {self.total} bytes")
        return self._parts

    def _open_parts(self) -> None:
        """Open the next part once the current one is full (zero-size parts complete at once)."""
        while len(self._parts) < len(self.sizes) and (
                not self._parts or self._have == self.sizes[len(self._parts) - 1]):
            size = self.sizes[len(self._parts)]
            self._parts.append(memoryview(np.empty(size, np.uint8)) if size >= LARGE_PART else bytearray())
            self._have = 0

    def _verify(self) -> None:
        if not hmac.compare_digest(self._hash.digest(), self.sha256):
            self.failed = True
            raise InvalidMessage("transfer digest does not match its bytes")


# ---- the sending side --------------------------------------------------------------------------------

def slices(parts: Sequence[memoryview], start: int, chunk_bytes: int) -> Iterator[tuple[int, list[memoryview]]]:
    """(offset, pieces) from ``start`` to the end, at most ``chunk_bytes`` each; pieces may span parts."""
    _check_chunk_bytes(chunk_bytes)
    offset, pieces, size = start, [], 0
    for index, base, view in _from(parts, start):
        while len(view):
            take = view[:chunk_bytes - size]
            pieces.append(take)
            size += len(take)
            view = view[len(take):]
            if size == chunk_bytes:
                yield offset, pieces
                offset, pieces, size = offset + size, [], 0
    if pieces:
        yield offset, pieces


def part_slices(parts: Sequence[memoryview], start: int, chunk_bytes: int) -> Iterator[tuple[int, int, memoryview]]:
    """(part index, offset within the part, slice) from global ``start``; slices never span parts."""
    _check_chunk_bytes(chunk_bytes)
    for index, base, view in _from(parts, start):
        for i in range(0, len(view), chunk_bytes):
            yield index, base + i, view[i:i + chunk_bytes]


def _from(parts: Sequence[memoryview], start: int) -> Iterator[tuple[int, int, memoryview]]:
    """(index, offset within the part, rest of the part) of every part from global ``start`` on."""
    if start < 0:
        raise InvalidMessage("negative offset")
    pos = 0
    for index, p in enumerate(parts):
        if start < pos + len(p):
            base = max(0, start - pos)
            yield index, base, p[base:]
        pos += len(p)
    if start > pos:
        raise InvalidMessage(f"offset {start} is past the end ({pos} bytes)")


def _check_chunk_bytes(chunk_bytes: int) -> None:
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise InvalidMessage(f"chunk size must be in 1..{CHUNK_BYTES} bytes, got {chunk_bytes}")


# ---- the two hot messages, by hand -------------------------------------------------------------------
# Protobuf wire format: a key varint (field << 3 | wire type), then a varint (type 0) or a length and
# bytes (type 2). Fields are written in number order, zero values omitted: what upb writes.

_VARINT, _LEN = 0, 2


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int_field(field: int, value: int) -> bytes:
    return _uvarint(field << 3 | _VARINT) + _uvarint(value) if value else b""


def _len_head(field: int, length: int) -> bytes:
    return _uvarint(field << 3 | _LEN) + _uvarint(length)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _len_head(field, len(value)) + value if value else b""


def encode_transfer_chunk(tid: bytes, offset: int, pieces: Sequence[memoryview]) -> bytes:
    """A serialized ``TransferChunk`` carrying ``pieces`` (their bytes copied once, here)."""
    n = sum(len(p) for p in pieces)
    head = _bytes_field(1, tid) + _int_field(2, offset) + (_len_head(3, n) if n else b"")
    return b"".join([head, *pieces])


def encode_aggregate_chunk(round_: int, kind: int, index: int, count: int, offset: int, part_size: int,
                           data: memoryview, content_sha256: bytes = b"", part_sizes: Sequence[int] = ()) -> bytes:
    """A serialized ``AggregateChunk`` (``content_sha256`` and ``part_sizes`` on a stream's first message)."""
    chunk_head = _int_field(1, offset) + _int_field(2, part_size) + (_len_head(3, len(data)) if len(data) else b"")
    chunk_len = len(chunk_head) + len(data)
    packed = b"".join(_uvarint(n) for n in part_sizes)
    tail = _bytes_field(200, content_sha256) + (_len_head(201, len(packed)) + packed if packed else b"")
    head = (_int_field(1, round_) + _int_field(2, kind) + _int_field(3, index) + _int_field(4, count)
            + (_len_head(5, chunk_len) if chunk_len else b"") + chunk_head)
    return b"".join([head, data, tail])


@dataclass(frozen=True)
class TransferSlice:
    transfer_id: bytes
    offset: int
    data: memoryview


@dataclass(frozen=True)
class AggregateSlice:
    round: int
    kind: int
    index: int
    count: int
    offset: int  # within part ``index``
    part_size: int
    data: memoryview
    content_sha256: bytes
    part_sizes: tuple[int, ...]


_U32, _I32, _U64 = (1 << 32) - 1, (1 << 31) - 1, (1 << 64) - 1


def decode_transfer_chunk(raw: Buffer) -> TransferSlice:
    f = _Fields(raw, "TransferChunk")
    tid = f.take(1, _LEN)
    offset = f.take(2, _VARINT)
    data = f.take(3, _LEN)
    return TransferSlice(bytes(tid) if tid is not None else b"", offset or 0,
                         data if data is not None else memoryview(b""))


def decode_aggregate_chunk(raw: Buffer) -> AggregateSlice:
    f = _Fields(raw, "AggregateChunk")
    chunk = f.take(5, _LEN)
    c = _Fields(chunk if chunk is not None else b"", "Chunk")
    data = c.take(3, _LEN)
    c.take(4, _LEN)  # Chunk.sha256: not used by resumable downloads (content_sha256 covers them)
    sha = f.take(200, _LEN)
    return AggregateSlice(
        round=f.take(1, _VARINT) or 0, kind=f.take(2, _VARINT, _I32) or 0, index=f.take(3, _VARINT, _U32) or 0,
        count=f.take(4, _VARINT, _U32) or 0, offset=c.take(1, _VARINT) or 0, part_size=c.take(2, _VARINT) or 0,
        data=data if data is not None else memoryview(b""), content_sha256=bytes(sha) if sha is not None else b"",
        part_sizes=f.repeated_varints(201))


class _Fields:
    """The fields of one serialized message; unknown fields skipped, known ones taken at most once."""

    def __init__(self, raw: Buffer, name: str) -> None:
        self.name = name
        buf = memoryview(raw).cast("B")
        self.fields: dict[int, list[tuple[int, int | memoryview]]] = {}
        pos = 0
        while pos < len(buf):
            key, pos = self._varint(buf, pos)
            field, wire = key >> 3, key & 7
            if not 0 < field < 1 << 29:
                self._bad("field number")
            if wire == _VARINT:
                val, pos = self._varint(buf, pos)
            elif wire == _LEN:
                n, pos = self._varint(buf, pos)
                if pos + n > len(buf):
                    self._bad("truncated field")
                val, pos = buf[pos:pos + n], pos + n
            elif wire in (1, 5):  # fixed64 / fixed32: no such field here, skipped like protobuf
                pos += 8 if wire == 1 else 4
                if pos > len(buf):
                    self._bad("truncated field")
                continue
            else:
                self._bad("wire type")
            self.fields.setdefault(field, []).append((wire, val))

    def take(self, field: int, wire: int, limit: int = _U64):
        got = self.fields.get(field)
        if not got:
            return None
        if len(got) > 1 or got[0][0] != wire:
            self._bad(f"field {field} repeated or of the wrong type")
        val = got[0][1]
        if wire == _VARINT and val > limit:
            self._bad(f"field {field} out of range")
        return val

    def repeated_varints(self, field: int) -> tuple[int, ...]:
        out: list[int] = []
        for wire, val in self.fields.get(field, ()):
            if wire == _VARINT:
                out.append(val)
                continue
            pos = 0
            while pos < len(val):
                v, pos = self._varint(val, pos)
                out.append(v)
        return tuple(out)

    def _varint(self, buf: memoryview, pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= len(buf) or shift > 63:
                self._bad("malformed varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        if result > _U64:
            self._bad("varint out of range")
        return result, pos

    def _bad(self, what: str):
        raise InvalidMessage(f"malformed {self.name}: {what}")
