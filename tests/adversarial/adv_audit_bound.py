"""The one-run privacy-audit bound of Steinke, Nasr & Jagielski (NeurIPS 2023), "Privacy auditing with
one (1) training run", Theorem 3.1 / Algorithm 3, written out with exact binomial tails (no scipy).

Setting: m canaries, each included in training independently with probability 1/2. After one training
run the auditor abstains on most canaries and guesses "in" or "out" for r of them (r fixed in advance);
v guesses are correct. If training is (eps, delta)-DP then

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta * max_{1<=i<=v} P[v > Binomial(r, q) >= v - i] / i,
    q = e^eps / (1 + e^eps),

so the largest eps whose p-value is still below beta is an empirical lower bound on epsilon that holds
with confidence 1 - beta.
"""

from __future__ import annotations

import math


def _log_binom_pmf(k: int, n: int, q: float) -> float:
    if q <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if q >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(q) + (n - k) * math.log1p(-q)
    )


def binom_pmf(k: int, n: int, q: float) -> float:
    return math.exp(_log_binom_pmf(k, n, q)) if 0 <= k <= n else 0.0


def binom_sf(v: int, n: int, q: float) -> float:
    """P[Binomial(n, q) >= v]."""
    if v <= 0:
        return 1.0
    return min(1.0, math.fsum(binom_pmf(k, n, q) for k in range(v, n + 1)))


def p_value_dp_audit(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of >= v correct guesses out of r (of m canaries) under (eps, delta)-DP."""
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v} r={r} m={m}")
    if eps < 0 or not (0.0 <= delta <= 1.0):
        raise ValueError("need eps >= 0 and 0 <= delta <= 1")
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    beta = binom_sf(v, r, q)
    alpha = 0.0
    below = 0.0  # P[v > Binomial(r, q) >= v - i]
    for i in range(1, v + 1):
        below += binom_pmf(v - i, r, q)
        alpha = max(alpha, below / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def eps_lower_bound(m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """Largest eps (to ~1e-9 relative) with p-value < beta: the empirical epsilon lower bound."""
    if not (0.0 < beta < 1.0):
        raise ValueError("need 0 < beta < 1")
    lo, hi = 0.0, 1.0
    if p_value_dp_audit(m, r, v, lo, delta) >= beta:
        return 0.0
    while p_value_dp_audit(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if p_value_dp_audit(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def audit_guesses(scores: list[float], included: list[bool], k_pos: int, k_neg: int) -> tuple[int, int]:
    """Guess "in" for the k_pos highest scores and "out" for the k_neg lowest; return (r, v)."""
    if len(scores) != len(included) or k_pos + k_neg > len(scores):
        raise ValueError("scores/included mismatch or too many guesses")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    guess_out = order[:k_neg]
    guess_in = order[len(order) - k_pos :]
    correct = sum(1 for i in guess_in if included[i]) + sum(1 for i in guess_out if not included[i])
    return k_pos + k_neg, correct
