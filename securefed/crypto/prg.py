"""Mask expansion: a 32-byte key -> a stream of uniform ring elements, from AES-256-CTR.

The initial counter block is zero, so byte ``16 j`` of a key's stream is the encryption of the
128-bit big-endian integer ``j``. That is safe only because every key is used for exactly one
stream (keys come from HKDF with a per-session salt, or from ``secrets``); never call these
functions twice with one key for two different purposes.

Speed (issue 12): a mask is never materialised. The vector is cut into contiguous ranges, one per
worker thread (AES-CTR in ``cryptography`` and numpy's ufuncs release the GIL, so threads run on
every core: measured in ``bench/secagg.py``); each worker seeks every stream to its range's start
(the counter block is ``offset / 16``) and walks its range in cache-sized blocks, adding each mask's
next block of keystream into the accumulator while that block is still in L2. Unsigned wrap-around
is exactly arithmetic mod 2^32 / 2^64. The result does not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from securefed.crypto._checks import require_bytes, require_int
from securefed.errors import CryptoError, InvalidInput

__all__ = ["BLOCK_BYTES", "CIPHER", "KEY_SIZE", "RING_DTYPES", "MaskStreams", "add_mask_", "add_masks_",
           "default_workers", "expand_mask", "usable_cores", "keystream", "ring_dtype", "run_ranges", "stream_at"]

CIPHER: Final = "AES-256-CTR"
KEY_SIZE: Final = 32
RING_DTYPES: Final = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}

# 128 KiB blocks: the accumulator block, one keystream block and (when encoding) the rounding
# buffers stay in L2 together; measured fastest among 32 KiB .. 1 MiB on the development machine.
BLOCK_BYTES: Final = 1 << 17
_ZEROS: Final = memoryview(bytes(4 * BLOCK_BYTES))  # immutable, so safe to share between threads
_AES_BLOCK: Final = 16
# Below this many words per worker a thread costs more than it saves.
_MIN_WORDS_PER_WORKER: Final = 1 << 18

T = TypeVar("T")


def ring_dtype(ring_bits: int) -> np.dtype:
    """numpy dtype holding Z_(2^ring_bits): uint32 for 32, uint64 for 64."""
    if isinstance(ring_bits, bool) or ring_bits not in RING_DTYPES:
        raise InvalidInput(f"ring_bits must be 32 or 64, got {ring_bits!r}")
    return RING_DTYPES[ring_bits]


def default_workers(variable: str = "SECUREFED_MASK_WORKERS") -> int:
    """Workers for parallel crypto work: the cores this process may run on, unless the environment
    ``variable`` overrides it (mask expansion: ``SECUREFED_MASK_WORKERS``, e.g. to keep cores free for
    training)."""
    env = os.environ.get(variable, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise InvalidInput(f"{variable} must be an integer, got {env!r}") from None
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_key(key: object) -> bytes:
    return require_bytes(key, "mask key", CryptoError, size=KEY_SIZE)


def stream_at(key: bytes, byte_offset: int = 0) -> CipherContext:
    """The keystream of ``key`` from ``byte_offset`` on (a multiple of 16): the counter block
    starts at ``byte_offset / 16`` (big-endian, as OpenSSL increments it)."""
    raw = _check_key(key)
    off = require_int(byte_offset, "byte_offset", InvalidInput, lo=0)
    if off % _AES_BLOCK:
        raise InvalidInput(f"byte_offset must be a multiple of {_AES_BLOCK}, got {off}")
    return Cipher(algorithms.AES(raw), modes.CTR((off // _AES_BLOCK).to_bytes(16, "big"))).encryptor()


def keystream(key: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` of the AES-256-CTR keystream under ``key`` (counter block 0)."""
    n = require_int(nbytes, "nbytes", InvalidInput, lo=0)
    enc = stream_at(key)
    step = len(_ZEROS)
    return b"".join(enc.update(_ZEROS[: min(step, n - start)]) for start in range(0, n, step))


def expand_mask(key: bytes, d: int, ring_bits: int) -> np.ndarray:
    """``d`` uniform elements of Z_(2^ring_bits): the keystream read as little-endian words.

    Exactly uniform (no rejection sampling needed) because each word is 32/64 uniform bits. The
    result is a fresh writable array; the expansion of a key is a prefix of any longer one.
    """
    dtype = ring_dtype(ring_bits)
    n = require_int(d, "d", InvalidInput, lo=0)
    enc = stream_at(key)
    out = np.empty(n, dtype=dtype.newbyteorder("<"))
    view = memoryview(out).cast("B")
    step = len(_ZEROS)
    for start in range(0, len(view), step):
        stop = min(start + step, len(view))
        enc.update_into(_ZEROS[: stop - start], view[start:stop])
    return out.astype(dtype, copy=False)  # no-op on little-endian hosts


class MaskStreams:
    """Signed mask streams positioned at one word offset of the vector they mask.

    ``apply(part, scratch)`` adds (sign +1) or subtracts (sign -1) each stream's next ``len(part)``
    words into ``part`` in place; calling it on consecutive blocks walks the streams forward.
    """

    __slots__ = ("_ops", "_itemsize")

    def __init__(self, masks: Sequence[tuple[bytes, int]], word_offset: int, dtype: np.dtype) -> None:
        self._itemsize = dtype.itemsize
        self._ops = [(stream_at(key, word_offset * self._itemsize), np.add if sign == 1 else np.subtract)
                     for key, sign in masks]

    def apply(self, part: np.ndarray, scratch: np.ndarray) -> None:
        count = part.size
        nbytes = count * self._itemsize
        raw = memoryview(scratch).cast("B")[:nbytes]
        words = scratch[:count]  # little-endian keystream words (numpy swaps on a big-endian host)
        zeros = _ZEROS[:nbytes]
        for enc, op in self._ops:
            enc.update_into(zeros, raw)
            op(part, words, part)  # in place; positional out is the cheapest ufunc call


def check_masks(masks: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """Every (key, sign) checked before any stream is opened, so a bad one changes nothing."""
    out = []
    for key, sign in masks:
        if isinstance(sign, bool) or sign not in (1, -1):
            raise InvalidInput(f"sign must be +1 or -1, got {sign!r}")
        out.append((_check_key(key), sign))
    return out


def block_words(dtype: np.dtype) -> int:
    return BLOCK_BYTES // dtype.itemsize


def run_ranges(n: int, align: int, workers: int | None, fn: Callable[[int, int], T]) -> list[T]:
    """``fn(start, stop)`` over contiguous ranges covering ``range(n)``, each start a multiple of
    ``align``, in up to ``workers`` threads (default: every core). Results in range order; the
    first exception of any range is raised after all ranges have stopped."""
    w = default_workers() if workers is None else require_int(workers, "workers", InvalidInput, lo=1)
    w = max(1, min(w, n // _MIN_WORDS_PER_WORKER))
    if w == 1:
        return [fn(0, n)]
    per = -(-n // w)
    per = -(-per // align) * align
    bounds = [(s, min(s + per, n)) for s in range(0, n, per)]
    with ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="securefed-mask") as pool:
        futures = [pool.submit(fn, s, e) for s, e in bounds]
        return [f.result() for f in futures]


def add_masks_(acc: np.ndarray, masks: Sequence[tuple[bytes, int]], *, workers: int | None = None) -> None:
    """In place: ``acc += sum(sign * expand_mask(key, acc.size, bits))`` mod 2^bits over ``masks``.

    ``acc`` must be a writable C-contiguous uint32 (ring 32) or uint64 (ring 64) array; any shape is
    treated as its flattened view. Each sign is +1 (add) or -1 (remove). ``workers`` threads share
    the vector (default: every core); the result is the same for any number of workers.
    """
    if not isinstance(acc, np.ndarray):
        raise InvalidInput(f"accumulator must be a numpy array, got {type(acc).__name__}")
    if acc.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise InvalidInput(f"accumulator dtype must be uint32 or uint64, got {acc.dtype}")
    if not acc.flags.c_contiguous or not acc.flags.writeable:
        raise InvalidInput("accumulator must be a writable C-contiguous array (use np.ascontiguousarray)")
    checked = check_masks(masks)
    if not checked or acc.size == 0:
        return
    flat = acc.reshape(-1)  # a view, since acc is C-contiguous
    dtype = acc.dtype
    per = block_words(dtype)

    def work(start: int, stop: int) -> None:
        streams = MaskStreams(checked, start, dtype)
        scratch = np.empty(per, dtype=dtype.newbyteorder("<"))
        for s in range(start, stop, per):
            streams.apply(flat[s : min(s + per, stop)], scratch)

    run_ranges(flat.size, per, workers, work)


def add_mask_(acc: np.ndarray, key: bytes, sign: int) -> None:
    """In place: ``acc += sign * expand_mask(key, acc.size, bits)`` mod 2^bits (one mask)."""
    add_masks_(acc, [(key, sign)])
