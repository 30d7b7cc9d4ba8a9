"""Fixed-point encoding of real-valued updates into the ring Z_(2^32) or Z_(2^64).

encode: reject NaN/Inf, clip to [-clip, clip], scale by 2^frac_bits, round stochastically
(unbiased: E[round(x)] = x) with randomness from an AES-CTR keystream under a fresh
``secrets`` key -- never numpy's RNG, because the rounding noise is added to private data --
and wrap into the ring as two's complement. Sums of encoded vectors are computed in the ring;
decode_sum reads the sum back as signed two's complement and divides by 2^frac_bits.

The decode is only correct if the true integer sum never leaves the signed range of the ring;
:meth:`FixedPointParams.check_capacity` refuses any parameter set where it could.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np

from securefed.crypto._checks import require_int
from securefed.crypto.prg import KEY_SIZE, expand_mask, ring_dtype
from securefed.errors import InsecureParameters, InvalidInput

__all__ = ["FLOAT_EXACT_BITS", "FixedPointParams", "decode_sum", "encode"]

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


def _uniform01(n: int, key: bytes) -> np.ndarray:
    """n uniform floats in [0, 1) with 53 random bits each, from the AES-CTR keystream under key."""
    words = expand_mask(key, n, 64)
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _as_float_array(values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu":
        raise InvalidInput(f"values must be a real numeric array, got dtype {arr.dtype}")
    out = arr.astype(np.float64, copy=True)
    finite = np.isfinite(out)
    if not finite.all():
        first = int(np.flatnonzero(~finite.reshape(-1))[0])
        raise InvalidInput(f"values contain NaN or Inf (first at flat index {first}); fix the update before encoding")
    return out


def _encode_with_rounding_key(values: object, params: FixedPointParams, key: bytes) -> tuple[np.ndarray, int]:
    """encode() with a caller-chosen rounding key: for known-answer tests only."""
    if not isinstance(params, FixedPointParams):
        raise InvalidInput(f"params must be FixedPointParams, got {type(params).__name__}")
    params.check_capacity(1)
    arr = _as_float_array(values)
    clip = float(params.clip)
    clipped = int(np.count_nonzero(np.abs(arr) > clip))
    np.clip(arr, -clip, clip, out=arr)
    arr *= params.scale  # a power of two: exact
    floor = np.floor(arr)
    frac = arr - floor  # exact, |arr| <= 2^53
    up = _uniform01(arr.size, key).reshape(arr.shape) < frac  # P(up) = frac: unbiased
    ints = floor.astype(np.int64) + up  # |value| <= ceil(clip * 2^f) < 2^(ring_bits-1)
    ring = ints.view(np.uint64)  # two's complement wrap into Z_(2^64)
    if params.ring_bits == 32:
        ring = ring.astype(np.uint32)  # reduction mod 2^32
    return ring, clipped


def encode(values: object, params: FixedPointParams) -> tuple[np.ndarray, int]:
    """(ring-encoded copy of ``values`` as uint32/uint64 with the same shape, number clipped)."""
    return _encode_with_rounding_key(values, params, secrets.token_bytes(KEY_SIZE))


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
