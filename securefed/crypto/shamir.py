"""Shamir secret sharing over GF(p) with p = 2^521 - 1.

Why this prime: it is the Mersenne prime M521 (a well-known prime, no primality proof needed),
it exceeds 2^512, so any secret of up to 64 bytes (X25519 private keys and 32-byte self-mask
seeds in particular) is a field element without reduction, and reduction mod a Mersenne prime is
cheap. A share is (x, y) with x = 1..n and y in [0, p).

Any t shares determine the secret; any t-1 shares are independent of it (information-theoretic),
because the t-1 random coefficients come from :mod:`secrets`.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from securefed.crypto._checks import ensure, require_bytes, require_int
from securefed.errors import CryptoError, InsecureParameters, InvalidInput

__all__ = [
    "MAX_SECRET_SIZE",
    "MAX_SHARES",
    "PRIME",
    "SHARE_SIZE",
    "Share",
    "combine",
    "split",
]

PRIME: Final = 2**521 - 1
_Y_BYTES: Final = (PRIME.bit_length() + 7) // 8  # 66
_X_BYTES: Final = 8
SHARE_SIZE: Final = _X_BYTES + _Y_BYTES  # 74 bytes: x (8 B big-endian) || y (66 B big-endian)
MAX_SECRET_SIZE: Final = 64  # 2^512 < PRIME
MAX_SHARES: Final = 2**32 - 1  # x must fit comfortably below the field size; also a sanity bound


@dataclass(frozen=True, slots=True)
class Share:
    """One point (x, f(x)) of the sharing polynomial. Ranges are checked by combine/to_bytes."""

    x: int
    y: int

    def __post_init__(self) -> None:
        for name, v in (("x", self.x), ("y", self.y)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise CryptoError(f"share {name} must be an int, got {type(v).__name__}")

    def __repr__(self) -> str:  # a share is secret material; do not print y
        return f"Share(x={self.x}, y=<hidden>)"

    def to_bytes(self) -> bytes:
        """Fixed-size encoding: x as 8 bytes then y as 66 bytes, both big-endian."""
        _check_point(self)
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        raw = require_bytes(data, "share", CryptoError, size=SHARE_SIZE)
        share = cls(int.from_bytes(raw[:_X_BYTES], "big"), int.from_bytes(raw[_X_BYTES:], "big"))
        _check_point(share)
        return share


def _check_point(share: Share) -> None:
    if not 0 < share.x < PRIME or share.x >= 2 ** (8 * _X_BYTES):
        raise CryptoError("share x coordinate out of range")
    if not 0 <= share.y < PRIME:
        raise CryptoError("share value out of field range")


def _check_params(n: int, t: int) -> tuple[int, int]:
    n = require_int(n, "n (number of shares)", InvalidInput, lo=1, hi=MAX_SHARES)
    t = require_int(t, "t (threshold)", InvalidInput, lo=1)
    if t > n:
        raise InsecureParameters(f"threshold t={t} exceeds the number of shares n={n}; lower t to <= {n}")
    return n, t


def _secret_int(secret: bytes) -> int:
    raw = require_bytes(secret, "secret", InvalidInput)
    ensure(
        0 < len(raw) <= MAX_SECRET_SIZE,
        f"secret must be 1..{MAX_SECRET_SIZE} bytes, got {len(raw)}",
        InvalidInput,
    )
    return int.from_bytes(raw, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def _split_with_coefficients(secret: bytes, n: int, coefficients: Sequence[int]) -> list[Share]:
    """Shares of f(x) = secret + c_1 x + ... + c_{t-1} x^{t-1} at x = 1..n (t = len(coefficients)+1).

    For known-answer tests only; real sharing must use :func:`split`, which draws the
    coefficients from ``secrets``.
    """
    n, _ = _check_params(n, len(coefficients) + 1)
    for c in coefficients:
        require_int(c, "coefficient", InvalidInput, lo=0, hi=PRIME - 1)
    poly = [_secret_int(secret), *coefficients]
    return [Share(x, _evaluate(poly, x)) for x in range(1, n + 1)]


def split(secret: bytes, n: int, t: int) -> list[Share]:
    """Split ``secret`` (1..64 bytes) into ``n`` shares at x = 1..n, any ``t`` of which recover it."""
    n, t = _check_params(n, t)
    coefficients = [secrets.randbelow(PRIME) for _ in range(t - 1)]
    return _split_with_coefficients(secret, n, coefficients)


@functools.lru_cache(maxsize=4096)
def _lagrange_weights(xs: tuple[int, ...], x: int) -> tuple[int, ...]:
    """w_i = prod_{j != i} (x - x_j) / (x_i - x_j) mod PRIME: they depend only on the (public)
    x-coordinates, so an unmasking server that rebuilds many secrets from shares at the same
    coordinates computes them once; one modular inversion for all of them (Montgomery's trick)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if i != j:
                num *= x - xj  # small integers: exact, reduced once below
                den *= xi - xj
        nums.append(num % PRIME)
        dens.append(den % PRIME)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)  # nonzero: the x are distinct and PRIME is prime
    out = [0] * len(xs)
    for i in reversed(range(len(xs))):
        out[i] = nums[i] * prefix[i] % PRIME * inv % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(out)


def _interpolate(points: Sequence[Share], x: int) -> int:
    """Value at ``x`` of the unique polynomial of degree < len(points) through ``points``."""
    weights = _lagrange_weights(tuple(p.x for p in points), x)
    return sum(w * p.y for w, p in zip(weights, points)) % PRIME


def combine(shares: Sequence[Share], t: int, secret_len: int = 32) -> bytes:
    """Recover the ``secret_len``-byte secret from at least ``t`` shares.

    Interpolates through the first ``t`` shares and checks that every extra share lies on the
    same polynomial, so a corrupted share is detected instead of yielding a wrong secret when
    more than ``t`` are given. CryptoError on too few shares, a duplicate or zero x, a value out
    of the field, inconsistent shares, or a result that does not fit in ``secret_len`` bytes.
    """
    t = require_int(t, "t (threshold)", InvalidInput, lo=1)
    secret_len = require_int(secret_len, "secret_len", InvalidInput, lo=1, hi=MAX_SECRET_SIZE)
    if not isinstance(shares, Sequence) or not all(isinstance(s, Share) for s in shares):
        raise CryptoError("shares must be a sequence of Share")
    if len(shares) < t:
        raise CryptoError(f"need at least t={t} shares to reconstruct, got {len(shares)}")
    for s in shares:
        _check_point(s)
    if len({s.x for s in shares}) != len(shares):
        raise CryptoError("duplicate share x coordinates")
    basis, extra = list(shares[:t]), shares[t:]
    for s in extra:
        if _interpolate(basis, s.x) != s.y:
            raise CryptoError("shares are inconsistent")
    value = _interpolate(basis, 0)
    if value >= 1 << (8 * secret_len):
        # With fewer than t honest shares the result is a uniform field element and almost never
        # fits; report it as a failed reconstruction.
        raise CryptoError("reconstructed value does not fit the secret length")
    return value.to_bytes(secret_len, "big")
