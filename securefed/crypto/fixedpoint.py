"""Fixed-point encoding of real-valued updates into the ring Z_(2^32) or Z_(2^64).

encode: reject NaN/Inf, clip to [-clip, clip], scale by 2^frac_bits, round stochastically
(unbiased to within 2^-32 of one unit, see ``_Encoder``) with randomness from an AES-CTR keystream
under a fresh ``secrets`` key -- never numpy's RNG, because the rounding noise is added to private
data -- and wrap into the ring as two's complement. ``encode_masked`` does the same and adds the
secure-aggregation masks in the same pass, block by block on every core (issue 12: the encoding
used to cost as much as all the masking). Sums of encoded vectors are computed in the ring;
decode_sum reads the sum back as signed two's complement and divides by 2^frac_bits.

The decode is only correct if the true integer sum never leaves the signed range of the ring;
:meth:`FixedPointParams.check_capacity` refuses any parameter set where it could.
"""

from __future__ import annotations

import math
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np

from securefed.crypto._checks import require_int
from securefed.crypto.prg import (
    BLOCK_BYTES,
    KEY_SIZE,
    MaskStreams,
    block_words,
    check_masks,
    ring_dtype,
    run_ranges,
    stream_at,
)
from securefed.errors import InsecureParameters, InvalidInput

__all__ = ["FLOAT_EXACT_BITS", "FixedPointParams", "decode_sum", "encode", "encode_masked", "rounding_bits"]

FLOAT_EXACT_BITS: Final = 53  # float64 represents every integer up to 2^53 exactly
_SIGNED: Final = {32: np.dtype(np.int32), 64: np.dtype(np.int64)}


@dataclass(frozen=True, slots=True)
class FixedPointParams:
    """clip: values are clipped to [-clip, clip]; frac_bits: scale 2^frac_bits; ring_bits: 32 | 64."""

    clip: float
    frac_bits: int
    ring_bits: int

    def __post_init__(self) -> None:
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)):
            raise InsecureParameters(f"clip must be a number, got {type(self.clip).__name__}")
        if not math.isfinite(self.clip) or self.clip <= 0:
            raise InsecureParameters(f"clip must be a finite number > 0, got {self.clip}")
        if isinstance(self.ring_bits, bool) or self.ring_bits not in _SIGNED:
            raise InsecureParameters(f"ring_bits must be 32 or 64, got {self.ring_bits!r}")
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
            raise InsecureParameters(f"frac_bits must be an int, got {type(self.frac_bits).__name__}")
        if not 0 <= self.frac_bits < self.ring_bits - 1:
            raise InsecureParameters(f"frac_bits must be in [0, {self.ring_bits - 2}], got {self.frac_bits}")

    @property
    def max_abs_encoded(self) -> int:
        """Largest |integer| one encoded value can take: ceil(clip * 2^frac_bits)."""
        return _max_abs(self.clip, self.frac_bits)

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    def check_capacity(self, n_clients: int, weight_max: int = 1) -> None:
        """Refuse (InsecureParameters) if a sum of ``n_clients`` encoded vectors, each multiplied
        by an integer weight of at most ``weight_max``, could leave the signed range of the ring
        (the decode would then be silently wrong), or if one scaled value is beyond float64's
        exact-integer range. The message names the value to change."""
        n = require_int(n_clients, "n_clients", InvalidInput, lo=1)
        w = require_int(weight_max, "weight_max", InvalidInput, lo=1)
        if self.max_abs_encoded > 2**FLOAT_EXACT_BITS:
            best = _max_frac_bits(self.clip, 2**FLOAT_EXACT_BITS)
            raise InsecureParameters(
                f"clip * 2^frac_bits = {self.clip} * 2^{self.frac_bits} exceeds 2^{FLOAT_EXACT_BITS} "
                f"(float64 precision); lower frac_bits to <= {best}"
                if best is not None
                else f"clip = {self.clip} exceeds 2^{FLOAT_EXACT_BITS}; lower clip"
            )
        limit = 2 ** (self.ring_bits - 1) - 1
        bound = n * w * self.max_abs_encoded
        if bound <= limit:
            return
        options = []
        best = _max_frac_bits(self.clip, limit // (n * w))
        if best is not None:
            options.append(f"lower frac_bits to <= {best}")
        options.append(f"lower clip to <= {limit // (n * w) / 2**self.frac_bits!r}")  # exact, not rounded up
        if self.ring_bits == 32 and n * w * _max_abs(self.clip, self.frac_bits) <= 2**63 - 1:
            options.append("use ring_bits=64")
        raise InsecureParameters(
            f"n_clients * weight_max * clip * 2^frac_bits = {n} * {w} * {self.clip} * 2^{self.frac_bits} "
            f"= {bound} exceeds 2^{self.ring_bits - 1} - 1 (signed range of ring_bits={self.ring_bits}); "
            + ", ".join(options[:-1])
            + (" or " if len(options) > 1 else "")
            + options[-1]
        )


def _max_abs(clip: float, frac_bits: int) -> int:
    return math.ceil(Fraction(clip) * 2**frac_bits)  # exact: no float rounding in the bound


def _max_frac_bits(clip: float, per_value_limit: int) -> int | None:
    """Largest f >= 0 with ceil(clip * 2^f) <= per_value_limit, or None if even f = 0 fails."""
    if per_value_limit < 1 or _max_abs(clip, 0) > per_value_limit:
        return None
    f = 0
    while f < 128 and _max_abs(clip, f + 1) <= per_value_limit:
        f += 1
    return f


def rounding_bits(params: FixedPointParams) -> int:
    """R: random bits per value for stochastic rounding. The value is scaled by 2^(frac_bits + R)
    and truncated to an int64, which must hold it and the R-bit random addend: R = min(32, 62 -
    bitlen(max_abs_encoded)), at least 8 for any parameters check_capacity passes."""
    return min(32, 62 - int(params.max_abs_encoded).bit_length())


def _as_flat_real(values: object) -> tuple[np.ndarray, tuple[int, ...]]:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise InvalidInput(f"values must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind in "iu" or arr.dtype.itemsize > 8 or arr.dtype.itemsize < 4:
        arr = arr.astype(np.float64)  # integers and exotic floats: one conversion up front
    return np.ascontiguousarray(arr).reshape(-1), arr.shape


class _Encoder:
    """One worker's block encoder: clip, scale, stochastic rounding, wrap into the ring.

    For a block x: y = clip(x) * 2^(f+R) (exact: a power of two), t = trunc(y) as int64, r uniform in
    [0, 2^R) from the rounding stream, encoded = (t + r) >> R (an arithmetic shift: floor), wrapped
    mod 2^ring_bits. E[(t + r) >> R] = t / 2^R exactly, and |t / 2^R - x 2^f| < 2^-R, so the rounding
    is unbiased to within 2^-R of one unit 2^-f. An exactly representable x encodes exactly.
    """

    def __init__(self, params: FixedPointParams, per: int) -> None:
        self.R = rounding_bits(params)
        self.scale = float(2 ** (params.frac_bits + self.R))
        self.lim = float(params.clip) * self.scale  # exact: clip times a power of two
        self.f = np.empty(per, np.float64)
        self.i = np.empty(per, np.int64)
        self.r = np.empty(per, np.dtype(np.uint32).newbyteorder("<"))
        self.r_bytes = memoryview(self.r).cast("B")
        self.ring_bits = params.ring_bits
        # Ring 32 with R = 32: the encoded value is the high word of t + r (little-endian hosts).
        self.high_word = params.ring_bits == 32 and self.R == 32 and sys.byteorder == "little"

    def block(self, x: np.ndarray, out: np.ndarray, stream, base: int) -> int:
        """Encode ``x`` into ``out`` (same length) with the next words of ``stream``; returns clipped count."""
        m = x.size
        f, i, r = self.f[:m], self.i[:m], self.r[:m]
        np.multiply(x, self.scale, out=f, dtype=np.float64)
        clipped = 0
        hi, lo = f.max(), f.min()
        if not (hi <= self.lim and lo >= -self.lim):  # also true for NaN, which compares false
            bad = ~np.isfinite(x)
            if bad.any():
                first = base + int(np.flatnonzero(bad)[0])
                raise InvalidInput(f"values contain NaN or Inf (first at flat index {first}); fix the update before encoding")
            clipped = int(np.count_nonzero(f > self.lim)) + int(np.count_nonzero(f < -self.lim))
            np.clip(f, -self.lim, self.lim, out=f)
        np.copyto(i, f, casting="unsafe")  # truncation toward zero; |f| < 2^62
        stream.update_into(_ZEROS_4[: 4 * m], self.r_bytes[: 4 * m])
        if self.R < 32:
            np.right_shift(r, np.uint32(32 - self.R), out=r)
        np.add(i, r, out=i)
        if self.high_word:
            np.copyto(out, i.view(np.uint32)[1::2])
        else:
            np.right_shift(i, self.R, out=i)
            np.copyto(out, i, casting="unsafe")  # two's complement wrap mod 2^ring_bits
        return clipped


_ZEROS_4: Final = memoryview(bytes(4 * BLOCK_BYTES))


def encode_masked(values: object, params: FixedPointParams, masks: Sequence[tuple[bytes, int]] = (), *,
                  workers: int | None = None, rounding_key: bytes | None = None) -> tuple[np.ndarray, int]:
    """Encode ``values`` and add ``masks`` (``prg.add_masks_`` semantics) in one pass over memory.

    Returns (ring vector, shape of ``values``, as uint32/uint64; number of values clipped). The
    rounding randomness is the AES-CTR keystream of a fresh ``secrets`` key (4 bytes per value),
    drawn block by block in the same pass as the masks, never numpy's RNG. ``rounding_key`` is for
    known-answer tests and reproducible simulations only. Every core works on its own range (``workers``); the result does not
    depend on how many.
    """
    if not isinstance(params, FixedPointParams):
        raise InvalidInput(f"params must be FixedPointParams, got {type(params).__name__}")
    params.check_capacity(1)
    checked = check_masks(masks)
    key = secrets.token_bytes(KEY_SIZE) if rounding_key is None else rounding_key
    stream_at(key)  # checks the key before any work
    flat, shape = _as_flat_real(values)
    dtype = ring_dtype(params.ring_bits)
    out = np.empty(flat.size, dtype=dtype)
    per = block_words(dtype)

    def work(start: int, stop: int) -> int:
        enc = _Encoder(params, per)
        rounding = stream_at(key, 4 * start)
        streams = MaskStreams(checked, start, dtype) if checked else None
        scratch = np.empty(per, dtype=dtype.newbyteorder("<"))
        clipped = 0
        for s in range(start, stop, per):
            e = min(s + per, stop)
            part = out[s:e]
            clipped += enc.block(flat[s:e], part, rounding, s)
            if streams is not None:
                streams.apply(part, scratch)
        return clipped

    clipped = sum(run_ranges(flat.size, per, workers, work)) if flat.size else 0
    return out.reshape(shape), clipped


def _encode_with_rounding_key(values: object, params: FixedPointParams, key: bytes) -> tuple[np.ndarray, int]:
    """encode() with a caller-chosen rounding key: for known-answer tests only."""
    return encode_masked(values, params, rounding_key=key)


def encode(values: object, params: FixedPointParams) -> tuple[np.ndarray, int]:
    """(ring-encoded copy of ``values`` as uint32/uint64 with the same shape, number clipped)."""
    return encode_masked(values, params)


def decode_sum(summed: np.ndarray, params: FixedPointParams, n_summed: int, *, weight_max: int = 1) -> np.ndarray:
    """Read a ring sum of ``n_summed`` encoded vectors (weights <= ``weight_max``) as float64.

    Checks capacity first: if the parameters allow an overflow, no value is returned at all.
    """
    if not isinstance(params, FixedPointParams):
        raise InvalidInput(f"params must be FixedPointParams, got {type(params).__name__}")
    if not isinstance(summed, np.ndarray) or summed.dtype != ring_dtype(params.ring_bits):
        got = summed.dtype if isinstance(summed, np.ndarray) else type(summed).__name__
        raise InvalidInput(
            f"summed must be a {ring_dtype(params.ring_bits)} array for ring_bits={params.ring_bits}, got {got}"
        )
    params.check_capacity(n_summed, weight_max)
    signed = summed.view(_SIGNED[params.ring_bits])  # two's complement reinterpretation
    return signed.astype(np.float64) / params.scale
