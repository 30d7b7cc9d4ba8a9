"""Accounting maths for the Poisson-subsampled Gaussian mechanism, kept apart from any state.

Everything here is a pure function of ``(noise_multiplier, sample_rate, steps)`` triples and delta.
The numerics are Opacus' own analysis code (``opacus.accountants.analysis.rdp`` and
``opacus.accountants.analysis.prv``), imported lazily because importing ``opacus`` pulls in torch.

Composition over rounds with different parameters:

- RDP: the RDP curves of the mechanisms add up order by order (Mironov 2017, Prop. 1); the sum is
  converted to (epsilon, delta) once, with the conversion of Balle et al. 2020, Thm. 21.
- PRV: each distinct mechanism is discretised on one common grid, self-composed by FFT and the
  results convolved (``opacus...prv.compose_heterogeneous``, after Gopi et al. 2021). The upper end of
  the PRV error interval is returned, so the value is a bound, not an estimate.

Examples (Opacus' reference run: sigma = 1.5, q = 0.04, 2250 steps, delta = 1e-5):

>>> round(rdp_epsilon([SubsampledGaussian(1.5, 0.04, 2250)], 1e-5), 4)
7.3291
>>> round(prv_epsilon([SubsampledGaussian(1.5, 0.04, 2250)], 1e-5), 2)
6.78

Composition: two rounds of 1125 steps equal one run of 2250 steps,

>>> a = rdp_epsilon([SubsampledGaussian(1.5, 0.04, 1125)] * 2, 1e-5)
>>> abs(a - rdp_epsilon([SubsampledGaussian(1.5, 0.04, 2250)], 1e-5)) < 1e-12
True

and edge cases are exact:

>>> rdp_epsilon([SubsampledGaussian(1.5, 0.0, 100)], 1e-5), prv_epsilon([], 1e-5)
(0.0, 0.0)
>>> rdp_epsilon([SubsampledGaussian(0.0, 0.1, 1)], 1e-5)
inf
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from securefed.errors import AccountingError

#: Opacus' RDP orders (``RDPAccountant.DEFAULT_ALPHAS``), copied so that no torch import is needed to
#: know them; a test checks they still equal Opacus'.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

#: PRV accuracy: epsilon is returned as estimate + PRV_EPS_ERROR (an upper bound). Opacus' default.
PRV_EPS_ERROR = 0.01


class SubsampledGaussian(NamedTuple):
    """``steps`` compositions of a Gaussian mechanism (noise multiplier sigma) on a Poisson sample of rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def _check(mechanisms: Iterable[SubsampledGaussian]) -> list[SubsampledGaussian]:
    out = []
    for m in mechanisms:
        sigma, q, steps = float(m[0]), float(m[1]), m[2]
        if not (math.isfinite(sigma) and sigma >= 0):
            raise AccountingError(f"noise_multiplier must be finite and >= 0, got {sigma}")
        if not (math.isfinite(q) and 0 <= q <= 1):
            raise AccountingError(f"sample_rate must be in [0, 1], got {q}")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise AccountingError(f"steps must be an integer >= 0, got {steps!r}")
        out.append(SubsampledGaussian(sigma, q, int(steps)))
    return out


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not (0 < delta < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta}")
    return delta


def merge(mechanisms: Iterable[SubsampledGaussian]) -> list[SubsampledGaussian]:
    """Drop mechanisms that release nothing (q = 0 or steps = 0) and add up the steps of identical
    (sigma, q) pairs. Composition is commutative, so this changes no epsilon; it only saves work.

    >>> merge([SubsampledGaussian(1.0, 0.1, 5), SubsampledGaussian(2.0, 0.0, 9), SubsampledGaussian(1.0, 0.1, 3)])
    [SubsampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=8)]
    """
    totals: dict[tuple[float, float], int] = {}
    for sigma, q, steps in _check(mechanisms):
        if q == 0 or steps == 0:
            continue
        totals[(sigma, q)] = totals.get((sigma, q), 0) + steps
    return [SubsampledGaussian(s, q, t) for (s, q), t in totals.items()]


def rdp_curve(
    mechanisms: Iterable[SubsampledGaussian], orders: Sequence[float] = DEFAULT_RDP_ORDERS
) -> np.ndarray:
    """Summed RDP of the composition at each order (Opacus ``compute_rdp``); may contain ``inf``.

    >>> c = rdp_curve([SubsampledGaussian(1.0, 1.0, 1)], orders=(2.0, 3.0))
    >>> [float(x) for x in c]  # q = 1: the plain Gaussian, alpha / (2 sigma^2)
    [1.0, 1.5]
    """
    total = np.zeros(len(orders), dtype=np.float64)
    for sigma, q, steps in merge(mechanisms):
        if sigma == 0:
            return np.full(len(orders), np.inf)
        # Opacus computes the one-step curve and multiplies by steps; the one-step curve depends only
        # on (q, sigma, orders), so it is memoised: a client's budget checks repeat the same mechanism
        # every round, and this is where all their time went.
        total += _one_step_rdp(float(q), float(sigma), tuple(float(o) for o in orders)) * steps
    return total


@functools.lru_cache(maxsize=512)
def _one_step_rdp(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    """Opacus ``compute_rdp(q, sigma, steps=1, orders)`` (read-only; ``compute_rdp`` is this times steps)."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    curve = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)),
                       dtype=np.float64)
    curve.setflags(write=False)
    return curve


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = DEFAULT_RDP_ORDERS) -> float:
    """Best (epsilon, delta) conversion over ``orders`` (Opacus ``get_privacy_spent``).

    eps = min over alpha of  rdp(alpha) + log((alpha-1)/alpha) - (log(delta) + log(alpha)) / (alpha-1);
    for rdp(2) = 1, delta = 1e-5:  1 + log(1/2) - (log(1e-5) + log(2)) = 11.1266

    >>> round(rdp_to_epsilon(np.array([1.0]), 1e-5, orders=(2.0,)), 4)
    11.1266
    """
    return rdp_to_epsilon_and_order(rdp, delta, orders)[0]


def rdp_to_epsilon_and_order(
    rdp: np.ndarray, delta: float, orders: Sequence[float] = DEFAULT_RDP_ORDERS
) -> tuple[float, float]:
    """``rdp_to_epsilon`` and the order that attains it (NaN when epsilon is 0 or infinite)."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    delta = _check_delta(delta)
    rdp = np.asarray(rdp, dtype=np.float64)
    if len(rdp) != len(orders):
        raise AccountingError("rdp curve and orders must have the same length")
    if np.all(rdp == 0):
        return 0.0, math.nan
    if np.all(np.isinf(rdp)):
        return math.inf, math.nan
    with warnings.catch_warnings():
        # Opacus warns when the optimum sits at the edge of the order range; the bound is still valid.
        warnings.simplefilter("ignore")
        eps, order = opacus_rdp.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    eps = float(eps)
    if math.isnan(eps):
        raise AccountingError("RDP conversion produced NaN")
    return max(eps, 0.0), float(order)


def rdp_epsilon(
    mechanisms: Iterable[SubsampledGaussian], delta: float, orders: Sequence[float] = DEFAULT_RDP_ORDERS
) -> float:
    """Epsilon of the composition by RDP (sum the curves, convert once)."""
    delta = _check_delta(delta)
    return rdp_to_epsilon(rdp_curve(mechanisms, orders), delta, orders)


def prv_epsilon(
    mechanisms: Iterable[SubsampledGaussian],
    delta: float,
    *,
    eps_error: float = PRV_EPS_ERROR,
    delta_error: float | None = None,
) -> float:
    """Epsilon of the composition by PRV numerical composition (an upper bound: estimate + eps_error).

    Heterogeneous mechanisms are composed exactly as Opacus' ``PRVAccountant`` does for a history
    of different (sigma, q) pairs: one grid, FFT self-composition, then pairwise convolution.
    """
    delta = _check_delta(delta)
    merged = merge(mechanisms)
    if not merged:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in merged):
        return math.inf
    from opacus.accountants.prv import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(sigma, q, steps) for sigma, q, steps in merged]
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps = float(acc.get_epsilon(delta=delta, eps_error=eps_error, delta_error=delta_error))
    except (RuntimeError, ValueError, FloatingPointError, OverflowError, MemoryError) as exc:
        raise AccountingError(
            f"PRV accountant failed numerically ({exc}); use the rdp accountant for these parameters"
        ) from None
    if math.isnan(eps):
        raise AccountingError("PRV accountant produced NaN; use the rdp accountant for these parameters")
    return max(eps, 0.0)
