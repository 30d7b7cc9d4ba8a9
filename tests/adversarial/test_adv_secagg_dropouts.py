"""Crashed or slow clients at every stage: up to the tolerance the sum is exact; one more is a clean abort.

Inputs are multiples of 2^-frac_bits, so the clients' stochastic rounding is exact and the released
aggregate can be compared for *equality* with the plaintext sum of exactly the clients whose masked
input the server accepted (U3). "Clean abort" means: ``ProtocolAbort``, no aggregate (``result``
raises), the server in ABORTED, and nothing the server collected exposes any individual input.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto.shamir import Share, combine
from securefed.errors import CryptoError, ProtocolAbort
from securefed.secagg import SecAggParams, ServerStage, ShareKind, SimulatedRound, Stage

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

D = 16
FRAC = 8


def exact_inputs(n: int) -> dict[int, np.ndarray]:
    # k / 2^FRAC: representable exactly, so encoding is deterministic (not secret: test data).
    base = np.arange(D, dtype=np.float64) - D / 2
    return {c: (base * c + 3 * c) / 2**FRAC for c in range(1, n + 1)}


def in_sum(drops: dict[int, Stage], n: int) -> tuple[int, ...]:
    """U3: clients that sent their masked input (dropping at CONSISTENCY/UNMASK still counts)."""
    return tuple(c for c in range(1, n + 1) if c not in drops or drops[c] > Stage.MASKED_INPUT)


def nobody_exposed(rnd: SimulatedRound, t: int) -> bool:
    """No client has both its self-mask seed and its mask key rebuildable from what the server got."""
    got: dict[tuple[int, ShareKind], list[Share]] = {}
    for response in rnd.replies.get(Stage.UNMASK, {}).values():
        for kind, shares in ((ShareKind.SELF_MASK, response.self_mask_shares), (ShareKind.MASK_KEY, response.key_shares)):
            for rs in shares:
                got.setdefault((rs.owner, kind), []).append(Share.from_bytes(rs.share))

    def rebuildable(owner: int, kind: ShareKind) -> bool:
        try:
            combine(got.get((owner, kind), []), t, 32)
            return True
        except CryptoError:
            return False

    return not any(rebuildable(c, ShareKind.SELF_MASK) and rebuildable(c, ShareKind.MASK_KEY) for c in rnd.clients)


def run(n: int, params: SecAggParams, drops: dict[int, Stage]) -> tuple[SimulatedRound, ProtocolAbort | None]:
    rnd = SimulatedRound(exact_inputs(n), params, max_colluders=NO_COLLUDERS)
    try:
        rnd.run(drop=drops)
    except ProtocolAbort as exc:
        return rnd, exc
    return rnd, None


def assert_exact(rnd: SimulatedRound, drops: dict[int, Stage], n: int) -> None:
    inputs = exact_inputs(n)
    result = rnd.server.result
    survivors = in_sum(drops, n)
    assert result.survivors == survivors, drops
    assert np.array_equal(result.values, sum(inputs[c] for c in survivors)), drops
    assert set(result.dropouts) == set(drops)


def assert_clean_abort(rnd: SimulatedRound, exc: ProtocolAbort | None, t: int, drops) -> None:
    assert exc is not None, f"round finished with {drops}"
    assert rnd.server.stage is ServerStage.ABORTED
    with pytest.raises(ProtocolAbort, match="no aggregate"):
        rnd.server.result  # noqa: B018 - the property raises
    assert nobody_exposed(rnd, t)


COMPLETE_5 = SecAggParams(threshold=3, frac_bits=FRAC)  # tolerance n - t = 2
COMPLETE_7 = SecAggParams(threshold=4, frac_bits=FRAC)  # tolerance n - t = 3


def test_every_pattern_of_up_to_n_minus_t_dropouts_at_any_stages_is_exact():
    """n = 5, t = 3: every set of <= 2 clients, each dropping at any of the five stages (275 rounds)."""
    n, count = 5, 0
    for k in (0, 1, 2):
        for who in itertools.combinations(range(1, n + 1), k):
            for stages in itertools.product(Stage, repeat=k):
                drops = dict(zip(who, stages))
                rnd, exc = run(n, COMPLETE_5, drops)
                assert exc is None, (drops, exc)
                assert_exact(rnd, drops, n)
                count += 1
    assert count == 1 + 5 * 5 + 10 * 25


@pytest.mark.parametrize("stage", list(Stage))
def test_n_minus_t_plus_one_dropouts_at_one_stage_abort_cleanly(stage):
    n = 5
    for who in itertools.combinations(range(1, n + 1), n - COMPLETE_5.threshold + 1):
        drops = dict.fromkeys(who, stage)
        rnd, exc = run(n, COMPLETE_5, drops)
        assert_clean_abort(rnd, exc, COMPLETE_5.threshold, drops)


@pytest.mark.parametrize("stage", list(Stage))
def test_larger_cohort_exact_at_n_minus_t_and_abort_at_one_more(stage):
    n, t = 7, COMPLETE_7.threshold
    for who in ((1, 2, 3), (5, 6, 7), (2, 4, 6)):
        drops = dict.fromkeys(who, stage)
        rnd, exc = run(n, COMPLETE_7, drops)
        assert exc is None, (drops, exc)
        assert_exact(rnd, drops, n)
        one_more = {**drops, 7 if 7 not in who else 1: stage}
        rnd, exc = run(n, COMPLETE_7, one_more)
        assert_clean_abort(rnd, exc, t, one_more)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mixed_stage_dropouts_one_beyond_tolerance_abort_cleanly(data):
    n, t = 5, COMPLETE_5.threshold
    who = data.draw(st.lists(st.integers(1, n), min_size=n - t + 1, max_size=n - t + 1, unique=True))
    stages = data.draw(st.lists(st.sampled_from(list(Stage)), min_size=len(who), max_size=len(who)))
    drops = dict(zip(who, stages))
    rnd, exc = run(n, COMPLETE_5, drops)
    assert_clean_abort(rnd, exc, t, drops)


SPARSE_8 = SecAggParams(threshold=3, neighbour_degree=4, frac_bits=FRAC)  # m = 5 holders, tolerance 2


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_sparse_graph_any_dropouts_give_the_exact_sum_or_a_clean_abort(data):
    """SecAgg+ (n = 8, k = 4, t = 3): any pattern of dropouts either releases exactly the sum of U3, or
    aborts cleanly; with <= m - t = 2 dropouts in total it always releases the sum."""
    n = 8
    k = data.draw(st.integers(0, 5))
    who = data.draw(st.lists(st.integers(1, n), min_size=k, max_size=k, unique=True))
    stages = data.draw(st.lists(st.sampled_from(list(Stage)), min_size=k, max_size=k))
    drops = dict(zip(who, stages))
    rnd, exc = run(n, SPARSE_8, drops)
    if exc is None:
        assert_exact(rnd, drops, n)
    else:
        assert len(drops) > SPARSE_8.dropout_tolerance(n), drops
        assert_clean_abort(rnd, exc, SPARSE_8.threshold, drops)
