"""Secure-aggregation parameters and the checks that refuse unsafe ones.

The Shamir threshold ``t`` counts shares out of a client's *share holders*: its ``k`` graph
neighbours plus itself (``m = k + 1``; for the complete graph of Bonawitz et al. 2017 ``m = n``).
With at most ``c`` colluding members among those holders (``max_colluders``), an active server must
never get ``t`` shares of a client's self-mask seed from one group of holders and ``t`` shares of its
mask key from another: an honest holder reveals one kind per client, a colluder reveals (and signs)
both. So the two groups need ``t - c`` honest holders each, out of ``m - c``, and we require
``2t >= m + c + 1`` (``c = 0`` is the old strict majority). The argument is in protocols/secagg.md.
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
# Colluding members assumed when the caller names no number: one (a single member working with the
# server already breaks the plain majority rule, see protocols/secagg.md).
DEFAULT_MAX_COLLUDERS = 1


def required_threshold(holders: int, max_colluders: int) -> int:
    """The smallest t with 2t >= m + c + 1: two disjoint honest groups can never both reach t."""
    return (holders + max_colluders + 2) // 2


def _check_colluders(c: int) -> None:
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise InsecureParameters(f"max_colluders must be an integer >= 0, got {c!r}")


class SecAggParams(StrictModel):
    """Protocol parameters of one secure-aggregation round (persisted in the round plan)."""

    threshold: int = Field(
        ge=2,
        description="Shamir threshold t: shares needed to rebuild a client's secrets; with c colluders "
        "among a client's m share holders (its neighbours plus itself), 2t >= m + c + 1.",
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

    def check_cohort(self, n: int, *, max_colluders: int = DEFAULT_MAX_COLLUDERS) -> None:
        """Refuse these parameters for ``n`` clients, at most ``max_colluders`` of them colluding with
        the server, with ``InsecureParameters`` naming what to change."""
        _check_colluders(max_colluders)
        if n < 3:
            raise InsecureParameters(f"secure aggregation needs at least 3 clients (got {n}); a sum of two reveals each to the other")
        if n > MAX_CLIENT_ID:
            raise InsecureParameters(f"cohort too large ({n})")
        m = self.holders_count(n)
        t, c = self.threshold, max_colluders
        need = required_threshold(m, c)
        if t > m:
            raise InsecureParameters(
                f"threshold t={t} exceeds the {m} share holders per client (n={n}): no secret could be "
                f"rebuilt; set threshold <= {m} or raise neighbour_degree"
            )
        if need > m:
            raise InsecureParameters(
                f"{m} share holders per client (n={n}, neighbour_degree={self.effective_degree(n)}) are too few "
                f"for max_colluding_members = {c}: 2t >= m + c + 1 needs t = {need} > m; list more members, raise "
                "neighbour_degree, or assume fewer colluders"
            )
        if t < need and c == 0:
            raise InsecureParameters(
                f"threshold t={t} is not a strict majority of the {m} share holders per client "
                f"(n={n}, neighbour_degree={self.effective_degree(n)}): set threshold >= {need}"
            )
        if t < need:
            raise InsecureParameters(
                f"threshold t={t} is too low for max_colluding_members = {c} with {m} share holders per client "
                f"(n={n}, neighbour_degree={self.effective_degree(n)}): a server with {c} colluder(s) could rebuild "
                f"both secrets of one client unless 2t >= m + c + 1; set threshold >= {need}"
            )
        self.fixed_point().check_capacity(n)

    def dropout_tolerance(self, n: int) -> int:
        """Dropouts that every pattern survives: m - t (any more may abort the round). With the colluder
        rule 2t >= m + c + 1 this is at most (m - c - 1) / 2."""
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


def suggest_threshold(n: int, neighbour_degree: int | None = None, *,
                      max_colluders: int = DEFAULT_MAX_COLLUDERS) -> int:
    """The smallest safe threshold for ``max_colluders`` colluders: ceil((m + c + 1) / 2).

    It maximises dropout tolerance (m - t, at most (m - c - 1) / 2) while keeping the colluder rule.
    ``InsecureParameters`` when the m share holders are too few for that many colluders.
    """
    _check_colluders(max_colluders)
    k = n - 1 if neighbour_degree is None or neighbour_degree >= n - 1 else neighbour_degree
    m = k + 1
    t = required_threshold(m, max_colluders)
    if t > m:
        raise InsecureParameters(f"{m} share holders per client cannot protect against {max_colluders} colluding "
                                 f"member(s): list more members or raise neighbour_degree")
    return t


def suggest_params(n: int, *, ring_bits: Literal[32, 64] = 32, frac_bits: int = 16, clip: float = 1.0,
                   sparse: bool = True, max_colluders: int = DEFAULT_MAX_COLLUDERS) -> SecAggParams:
    """SecAgg+ (``sparse=True``) or complete-graph parameters for ``n`` clients, already checked."""
    k = suggest_neighbour_degree(n) if sparse else None
    params = SecAggParams(threshold=suggest_threshold(n, k, max_colluders=max_colluders),
                          neighbour_degree=k if k is not None and k < n - 1 else None,
                          ring_bits=ring_bits, frac_bits=frac_bits, clip=clip)
    params.check_cohort(n, max_colluders=max_colluders)
    return params
