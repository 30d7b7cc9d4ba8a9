"""Secure-aggregation parameters and the checks that refuse unsafe ones.

The Shamir threshold ``t`` counts shares out of a client's *share holders*: its ``k`` graph
neighbours plus itself (``m = k + 1``; for the complete graph of Bonawitz et al. 2017 ``m = n``).
``t`` must be a strict majority of ``m``: with ``t <= m/2`` two disjoint groups of holders could
each reveal a different share of the same client (its self-mask seed to one, its mask key to the
other) and the server would unmask that client's individual input.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from securefed.config import StrictModel
from securefed.crypto.fixedpoint import FixedPointParams
from securefed.errors import InsecureParameters

# Ids travel as 8-byte big-endian integers in HKDF info and AEAD associated data.
MAX_CLIENT_ID = 2**63 - 1


class SecAggParams(StrictModel):
    """Protocol parameters of one secure-aggregation round (persisted in the round plan)."""

    threshold: int = Field(
        ge=2,
        description="Shamir threshold t: shares needed to rebuild a client's secrets; a strict "
        "majority of its share holders (its neighbours plus itself).",
    )
    neighbour_degree: int | None = Field(
        default=None,
        ge=2,
        description="SecAgg+ graph degree k (even). None, or >= n-1, means the complete graph.",
    )
    ring_bits: Literal[32, 64] = Field(default=32, description="Masked values live in Z_(2^ring_bits).")
    frac_bits: int = Field(default=16, ge=0, le=62, description="Fixed-point fractional bits f.")
    clip: float = Field(default=1.0, gt=0.0, allow_inf_nan=False, description="Each coordinate is clipped to [-clip, clip].")

    @field_validator("neighbour_degree")
    @classmethod
    def _even_degree(cls, k: int | None) -> int | None:
        # The Harary construction joins each node to k/2 ring neighbours on each side.
        if k is not None and k % 2:
            raise ValueError(f"neighbour_degree must be even (got {k}); use {k + 1} or None for the complete graph")
        return k

    def effective_degree(self, n: int) -> int:
        """The degree actually used with ``n`` clients (the complete graph when ``k >= n - 1``)."""
        if self.neighbour_degree is None or self.neighbour_degree >= n - 1:
            return n - 1
        return self.neighbour_degree

    def is_complete(self, n: int) -> bool:
        return self.effective_degree(n) == n - 1

    def holders_count(self, n: int) -> int:
        """m: how many parties hold shares of one client's secrets (its neighbours and itself)."""
        return self.effective_degree(n) + 1

    def fixed_point(self) -> FixedPointParams:
        """The matching ``crypto.fixedpoint.FixedPointParams``."""
        return FixedPointParams(clip=self.clip, frac_bits=self.frac_bits, ring_bits=self.ring_bits)

    def check_cohort(self, n: int) -> None:
        """Refuse these parameters for ``n`` clients with ``InsecureParameters`` naming what to change."""
        if n < 3:
            raise InsecureParameters(f"secure aggregation needs at least 3 clients (got {n}); a sum of two reveals each to the other")
        if n > MAX_CLIENT_ID:
            raise InsecureParameters(f"cohort too large ({n})")
        m = self.holders_count(n)
        t = self.threshold
        if 2 * t <= m:
            raise InsecureParameters(
                f"threshold t={t} is not a strict majority of the {m} share holders per client "
                f"(n={n}, neighbour_degree={self.effective_degree(n)}): set threshold >= {m // 2 + 1}"
            )
        if t > m:
            raise InsecureParameters(
                f"threshold t={t} exceeds the {m} share holders per client (n={n}): no secret could be "
                f"rebuilt; set threshold <= {m} or raise neighbour_degree"
            )
        self.fixed_point().check_capacity(n)

    def dropout_tolerance(self, n: int) -> int:
        """Dropouts that every pattern survives: m - t (any more may abort the round)."""
        return self.holders_count(n) - self.threshold


def suggest_neighbour_degree(n: int) -> int:
    """A SecAgg+ degree k = O(log n) for ``n`` clients (even; ``n - 1`` when the graph would be dense).

    Bell et al. 2020 show that a random k-regular graph with k = O(log n) keeps the protocol
    secure and correct with high probability against a fixed fraction of corrupt and dropped
    clients. We use the practical rule k = 3 * log2(n), rounded up to even: e.g. n=100 -> 20,
    n=1000 -> 30. The proven constants for failure probability 2^-40 are larger; a deployment
    that needs the bound (rather than the heuristic) should compute k from their Theorem 3.
    """
    if n < 3:
        raise InsecureParameters(f"secure aggregation needs at least 3 clients (got {n})")
    k = math.ceil(3 * math.log2(n))
    k += k % 2
    return n - 1 if k >= n - 1 else k


def suggest_threshold(n: int, neighbour_degree: int | None = None) -> int:
    """The smallest safe threshold: a strict majority of the m share holders (floor(m/2) + 1).

    It maximises dropout tolerance (m - t) while keeping the majority rule above.
    """
    k = n - 1 if neighbour_degree is None or neighbour_degree >= n - 1 else neighbour_degree
    return (k + 1) // 2 + 1


def suggest_params(n: int, *, ring_bits: Literal[32, 64] = 32, frac_bits: int = 16, clip: float = 1.0,
                   sparse: bool = True) -> SecAggParams:
    """SecAgg+ (``sparse=True``) or complete-graph parameters for ``n`` clients, already checked."""
    k = suggest_neighbour_degree(n) if sparse else None
    params = SecAggParams(threshold=suggest_threshold(n, k), neighbour_degree=k if k is not None and k < n - 1 else None,
                          ring_bits=ring_bits, frac_bits=frac_bits, clip=clip)
    params.check_cohort(n)
    return params
