"""Wire checks for CKKS ciphertext bytes, done in pure Python *before* SEAL sees them.

SEAL inflates a zstd payload fully before it validates the ciphertext inside, and a zstd frame
can expand ~30000x (RLE blocks). So every blob is checked here first: exact SEAL header, one
single-segment zstd frame whose declared content size fits the ciphertext we expect, and a walk of
the block headers bounding what the frame can inflate to. Only then is it handed to SEAL, which
checks the ciphertext metadata and that every coefficient is reduced modulo its prime.

Also here: a length-prefixed container for a list of chunks (no pickle).
"""

from __future__ import annotations

import struct
from typing import Sequence

from securefed.errors import InvalidMessage

# seal/serialization.h: SEALHeader is 16 bytes: magic u16, header_size u8, version major u8,
# minor u8, compr_mode u8, reserved u16, size u64 (whole blob including the header).
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
SEAL_MAGIC = 0xA15E
SEAL_VERSION_MAJOR = 4
COMPR_ZSTD = 2

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_MAX_BLOCK = 128 * 1024
_ZSTD_BLOCK_RAW, _ZSTD_BLOCK_RLE, _ZSTD_BLOCK_COMPRESSED = 0, 1, 2

# Ciphertext metadata (parms_id, flags, sizes, scale, correction factor), DynArray header and the
# seed record together stay well under this.
_METADATA_SLACK = 512


def max_inflated_bytes(poly_modulus_degree: int, data_primes: int) -> int:
    """Largest uncompressed serialization of a size-2 ciphertext at the data level."""
    return _METADATA_SLACK + 2 * poly_modulus_degree * data_primes * 8


def max_blob_bytes(poly_modulus_degree: int, data_primes: int) -> int:
    """Largest acceptable compressed blob: zstd never expands by more than its block headers."""
    inflated = max_inflated_bytes(poly_modulus_degree, data_primes)
    return _SEAL_HEADER.size + inflated + inflated // 1024 + 64


def check_seal_zstd_blob(data: bytes, max_inflated: int) -> None:
    """Raise InvalidMessage unless ``data`` is one SEAL-zstd blob that inflates to <= max_inflated."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidMessage("ciphertext chunk must be bytes")
    data = bytes(data)
    if len(data) < _SEAL_HEADER.size + 8:
        raise InvalidMessage("ciphertext chunk too short")
    magic, hsize, major, _minor, compr, reserved, size = _SEAL_HEADER.unpack_from(data)
    if magic != SEAL_MAGIC or hsize != _SEAL_HEADER.size or reserved != 0:
        raise InvalidMessage("ciphertext chunk has no valid SEAL header")
    if major != SEAL_VERSION_MAJOR:
        raise InvalidMessage(f"ciphertext chunk is from SEAL {major}.x, expected {SEAL_VERSION_MAJOR}.x")
    if compr != COMPR_ZSTD:
        raise InvalidMessage("ciphertext chunk must be zstd-compressed")
    if size != len(data):
        raise InvalidMessage("ciphertext chunk length does not match its header")
    _check_zstd_frame(memoryview(data)[_SEAL_HEADER.size :], max_inflated)


def _check_zstd_frame(frame: memoryview, max_inflated: int) -> None:
    """RFC 8878 frame walk: one frame, no dictionary, declared size bounded, blocks consistent."""
    n = len(frame)
    if n < 6 or int.from_bytes(frame[0:4], "little") != _ZSTD_MAGIC:
        raise InvalidMessage("ciphertext chunk payload is not a zstd frame")
    fhd = frame[4]
    fcs_flag, single_segment = fhd >> 6, (fhd >> 5) & 1
    reserved, checksum, dict_flag = (fhd >> 3) & 1, (fhd >> 2) & 1, fhd & 3
    if reserved or dict_flag or not single_segment:
        # SEAL writes single-segment frames with a declared content size; anything else is foreign.
        raise InvalidMessage("ciphertext chunk zstd frame has unexpected flags")
    pos = 5
    fcs_len = {0: 1, 1: 2, 2: 4, 3: 8}[fcs_flag]
    if pos + fcs_len > n:
        raise InvalidMessage("ciphertext chunk zstd frame truncated")
    content_size = int.from_bytes(frame[pos : pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    pos += fcs_len
    if content_size > max_inflated:
        raise InvalidMessage("ciphertext chunk declares more data than a ciphertext holds")
    # Single segment: the window is the content size, so a compressed block regenerates at most that.
    block_cap = min(content_size, _ZSTD_MAX_BLOCK)
    exact = 0
    upper = 0
    while True:
        if pos + 3 > n:
            raise InvalidMessage("ciphertext chunk zstd frame truncated")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        pos += 3
        last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
        if btype == _ZSTD_BLOCK_RAW:
            if bsize > block_cap:
                raise InvalidMessage("ciphertext chunk zstd block too large")
            exact += bsize
            upper += bsize
            pos += bsize
        elif btype == _ZSTD_BLOCK_RLE:
            if bsize > block_cap:
                raise InvalidMessage("ciphertext chunk zstd block too large")
            exact += bsize
            upper += bsize
            pos += 1
        elif btype == _ZSTD_BLOCK_COMPRESSED:
            if bsize > _ZSTD_MAX_BLOCK:
                raise InvalidMessage("ciphertext chunk zstd block too large")
            upper += block_cap
            pos += bsize
        else:
            raise InvalidMessage("ciphertext chunk zstd block type is reserved")
        if pos > n:
            raise InvalidMessage("ciphertext chunk zstd frame truncated")
        if exact > content_size or upper > content_size + _ZSTD_MAX_BLOCK:
            raise InvalidMessage("ciphertext chunk zstd frame inflates beyond its declared size")
        if last:
            break
    if checksum:
        pos += 4
    if pos != n:
        raise InvalidMessage("ciphertext chunk has trailing or missing bytes after its zstd frame")


# --- chunk container -----------------------------------------------------------------------------

_CONTAINER_MAGIC = b"SFCK"
_CONTAINER_VERSION = 1
_U32 = struct.Struct("<I")


def pack_chunks(chunks: Sequence[bytes]) -> bytes:
    """``SFCK`` | version u8 | count u32 | (length u32 | bytes)*count."""
    out = [_CONTAINER_MAGIC, bytes([_CONTAINER_VERSION]), _U32.pack(len(chunks))]
    for c in chunks:
        out.append(_U32.pack(len(c)))
        out.append(bytes(c))
    return b"".join(out)


def unpack_chunks(data: bytes, *, max_chunks: int, max_chunk_bytes: int) -> list[bytes]:
    """Inverse of pack_chunks; every size is checked before anything is sliced."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidMessage("chunk container must be bytes")
    view = memoryview(bytes(data))
    head = len(_CONTAINER_MAGIC) + 1 + _U32.size
    if len(view) < head or bytes(view[:4]) != _CONTAINER_MAGIC:
        raise InvalidMessage("not a securefed CKKS chunk container")
    if view[4] != _CONTAINER_VERSION:
        raise InvalidMessage(f"chunk container version {view[4]} is not supported")
    (count,) = _U32.unpack_from(view, 5)
    if count > max_chunks:
        raise InvalidMessage(f"chunk container holds {count} chunks, at most {max_chunks} expected")
    pos = head
    chunks: list[bytes] = []
    for _ in range(count):
        if pos + _U32.size > len(view):
            raise InvalidMessage("chunk container truncated")
        (length,) = _U32.unpack_from(view, pos)
        pos += _U32.size
        if length > max_chunk_bytes:
            raise InvalidMessage(f"chunk of {length} bytes exceeds the limit of {max_chunk_bytes}")
        if pos + length > len(view):
            raise InvalidMessage("chunk container truncated")
        chunks.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != len(view):
        raise InvalidMessage("chunk container has trailing bytes")
    return chunks
