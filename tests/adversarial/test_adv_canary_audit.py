"""Empirical privacy audit of the DP-SGD path in one training run (Steinke, Nasr & Jagielski 2023).

The bound maths lives in adv_audit_bound.py; the training audits are below it.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from adv_audit_bound import audit_guesses, binom_sf, eps_lower_bound, p_value_dp_audit


def _exact_sf(v: int, n: int, q: Fraction) -> Fraction:
    return sum((Fraction(math.comb(n, k)) * q**k * (1 - q) ** (n - k) for k in range(v, n + 1)), Fraction(0))


@pytest.mark.parametrize("n, v, q", [(10, 7, Fraction(3, 4)), (40, 30, Fraction(1, 2)), (25, 25, Fraction(9, 10))])
def test_binomial_tail_matches_exact_rationals(n, v, q):
    assert binom_sf(v, n, float(q)) == pytest.approx(float(_exact_sf(v, n, q)), rel=1e-9)


def test_all_correct_pure_dp_bound_has_closed_form():
    # delta = 0, v = r: p-value = q^r, so eps = logit(beta^(1/r)).
    for r in (10, 50, 100):
        q = 0.05 ** (1 / r)
        assert eps_lower_bound(m=2 * r, r=r, v=r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)


def test_bound_is_monotone_in_correct_guesses_and_zero_at_chance():
    bounds = [eps_lower_bound(m=200, r=100, v=v, delta=1e-5) for v in range(50, 101, 5)]
    assert bounds[0] == 0.0
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1] > 3.0
    # delta only makes the bound weaker (more conservative).
    assert eps_lower_bound(200, 100, 95, delta=1e-3) < eps_lower_bound(200, 100, 95, delta=0.0)


def test_p_value_and_guessing_reject_nonsense():
    with pytest.raises(ValueError):
        p_value_dp_audit(m=10, r=11, v=3, eps=1.0, delta=0.0)
    assert audit_guesses([0.1, 0.9, 0.5, -1.0], [False, True, True, False], k_pos=1, k_neg=1) == (2, 2)
    assert audit_guesses([0.9, 0.1], [False, True], k_pos=1, k_neg=1) == (2, 0)
