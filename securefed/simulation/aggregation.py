"""The round's sum, by the real aggregation code run in process: the secure-aggregation state machines
(``secagg.SimulatedRound``: every member's ``SecAggClient`` and the ``SecAggServer``, real keys, Shamir
shares, masks and dropout recovery), CKKS (``he``: members' encryption and linear tags, the key-free
server sum, a member's checked decryption), or a plain sum.

Parameters follow the round's cohort as the coordinator's do: the SecAgg+ graph degree and the smallest
threshold safe against ``max_colluders`` for this many members, the smallest fixed-point ring in which
the cohort's sum cannot overflow. A round whose survivors fall below the threshold aborts (``aborted``
says why) and releases nothing, as a real round does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from securefed import he  # TenSEAL itself loads on first use (ckks mode only)
from securefed.crypto.fixedpoint import FixedPointParams
from securefed.errors import InsecureParameters, ProtocolAbort
from securefed.secagg import SecAggParams, SimulatedRound, Stage, suggest_neighbour_degree, suggest_threshold

FRAC_BITS = 24  # the coordinator's default (federation.frac_bits)
# Members that stop at one of these stages never sent their update (nothing was released).
CONTRIBUTING = frozenset({Stage.CONSISTENCY, Stage.UNMASK})
DROP_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)


@dataclass(frozen=True)
class SumResult:
    values: np.ndarray | None = field(repr=False)  # float64 sum of the contributors' payloads; None if aborted
    contributors: tuple[int, ...]  # members whose payload is in the sum
    threshold: int
    aborted: str | None = None
    server_seconds: float = 0.0
    seconds: float = 0.0


def secagg_params(n: int, bound: float, max_colluders: int) -> SecAggParams:
    """The coordinator's parameters for a cohort of ``n``: SecAgg+ degree, safe threshold, smallest ring."""
    k = suggest_neighbour_degree(n)
    t = suggest_threshold(n, k, max_colluders=max_colluders)
    for bits in (32, 64):
        try:
            FixedPointParams(clip=bound, frac_bits=FRAC_BITS, ring_bits=bits).check_capacity(n)
        except InsecureParameters:
            continue
        break
    return SecAggParams(threshold=t, neighbour_degree=k if k < n - 1 else None, ring_bits=bits, frac_bits=FRAC_BITS,
                        clip=bound)


def rounding_key(seed_key: bytes, round_id: int, member: int) -> bytes:
    """Reproducible mode: the fixed-point rounding key of one member in one round (never secret)."""
    return hashlib.sha256(b"securefed/simulate/rounding/v1" + seed_key + round_id.to_bytes(8, "big")
                          + member.to_bytes(8, "big")).digest()


def secagg_sum(cohort: list[int], payloads: Mapping[int, np.ndarray], drops: Mapping[int, Stage], *, length: int,
               bound: float, max_colluders: int, round_id: int, seed_key: bytes | None = None) -> SumResult:
    """One secure-aggregation round over ``cohort`` (member indices). ``payloads``: the members that trained;
    ``drops``: member -> the stage it goes silent at (a cohort member without a payload must drop before
    it masks)."""
    t0 = time.perf_counter()
    params = secagg_params(len(cohort), bound, max_colluders)
    cid = {m: i + 1 for i, m in enumerate(cohort)}  # the state machines number clients 1..n
    member_of = {i: m for m, i in cid.items()}
    inputs = {cid[m]: (lambda m=m: payloads[m]) for m in cohort}
    keys = {cid[m]: rounding_key(seed_key, round_id, m) for m in cohort} if seed_key is not None else None
    rnd = SimulatedRound(inputs, params, round_id=round_id, keep_history=False, max_colluders=max_colluders,
                         vector_length=length, rounding_keys=keys)
    try:
        out = rnd.run(drop={cid[m]: s for m, s in drops.items()})
    except ProtocolAbort as exc:
        return SumResult(None, (), params.threshold, str(exc), sum(rnd.server_seconds.values()),
                         time.perf_counter() - t0)
    survivors = tuple(sorted(member_of[i] for i in out.result.survivors))
    return SumResult(out.result.values, survivors, params.threshold, None, sum(rnd.server_seconds.values()),
                     time.perf_counter() - t0)


def plaintext_sum(cohort: list[int], payloads: Mapping[int, np.ndarray], drops: Mapping[int, Stage]) -> SumResult:
    t0 = time.perf_counter()
    contributors = tuple(m for m in cohort if m in payloads and drops.get(m, Stage.UNMASK) in CONTRIBUTING)
    if not contributors:
        return SumResult(None, (), 1, "no member sent its update", 0.0, time.perf_counter() - t0)
    total = np.sum([payloads[m] for m in contributors], axis=0)
    return SumResult(total, contributors, 1, None, 0.0, time.perf_counter() - t0)


class CkksSummer:
    """CKKS with the federation's one secret context (members) and its public one (server)."""

    def __init__(self) -> None:
        secret = he.generate_client_context(he.DEFAULT_PARAMS_NAME)
        self.client = he.ParallelClientContext(secret._ctx, secret.params)  # LLM-sized adapters on every core
        self.server = he.ServerContext.from_public_bytes(self.client.public_bytes(), he.DEFAULT_PARAMS_NAME)

    def sum(self, cohort: list[int], payloads: Mapping[int, np.ndarray], drops: Mapping[int, Stage], *,
            length: int, bound: float, max_colluders: int, round_id: int) -> SumResult:
        t0 = time.perf_counter()
        threshold = max(2, suggest_threshold(len(cohort), max_colluders=max_colluders))
        contributors = tuple(m for m in cohort if m in payloads and drops.get(m, Stage.UNMASK) in CONTRIBUTING)
        if len(contributors) < threshold:
            return SumResult(None, (), threshold, f"{len(contributors)} contributions, the threshold is {threshold}",
                             0.0, time.perf_counter() - t0)
        keys = self.client.attempt_keys(hashlib.sha256(b"simulated-plan").digest(), round_id)
        agg = he.ServerAggregator(self.server, length)
        tags, server_s = [], 0.0
        for m in contributors:
            enc = self.client.encrypt(np.asarray(payloads[m], dtype=np.float64))
            tags.append(self.client.contribution_tag(enc, keys))
            s0 = time.perf_counter()
            agg.add(enc, sender=str(m))
            server_s += time.perf_counter() - s0
        s0 = time.perf_counter()
        total = agg.result()
        server_s += time.perf_counter() - s0
        if not self.client.sum_matches(total, tags, keys):
            return SumResult(None, (), threshold, "the sum's tag does not match its contributors'", server_s,
                             time.perf_counter() - t0)
        values = self.client.decrypt(total, noise_key=keys.flood)
        # As the coordinator does: CKKS is approximate, so a sum at the edge of its range can come back a
        # hair outside it; clamping to the range is post-processing.
        lim = len(contributors) * bound
        return SumResult(np.clip(values, -lim, lim), contributors, threshold, None, server_s, time.perf_counter() - t0)
