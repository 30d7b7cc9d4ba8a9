"""The unmasked sum equals the plain ring sum, bit for bit, under every tolerated dropout pattern;
one dropout too many aborts the round with no aggregate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed.crypto.fixedpoint import encode
from securefed.errors import ProtocolAbort
from securefed.secagg import SecAggParams, ServerStage, SimulatedRound, Stage, simulate_round
from securefed.secagg.simulation import plain_ring_sum

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

D = 24


def exact_inputs(ids, frac_bits: int, seed: int, clip: float = 1.0):
    """Inputs on the fixed-point grid, so stochastic rounding is the identity and the encoding is known."""
    rng = np.random.default_rng(seed)  # not secret: test data
    scale = 2**frac_bits
    lim = int(clip * scale)
    return {cid: rng.integers(-lim, lim + 1, D).astype(np.float64) / scale for cid in ids}


def check_exact(out, inputs, params: SecAggParams) -> None:
    fp = params.fixed_point()
    encoded = {cid: encode(v, fp)[0] for cid, v in inputs.items()}
    survivors = out.result.survivors
    expected = plain_ring_sum(encoded, survivors)
    assert out.result.ring_sum.dtype == expected.dtype
    assert np.array_equal(out.result.ring_sum, expected)
    assert np.array_equal(out.result.values, sum(inputs[c] for c in survivors))


CONFIGS = [
    # (n, threshold, neighbour_degree, ring_bits)
    (3, 2, None, 32),
    (5, 3, None, 64),
    (7, 4, None, 32),
    (8, 3, 4, 32),
    (10, 3, 4, 64),
    (10, 4, 6, 32),
    (10, 6, None, 32),
]


@pytest.mark.parametrize(("n", "t", "k", "bits"), CONFIGS)
def test_no_dropouts_exact(n, t, k, bits) -> None:
    params = SecAggParams(threshold=t, neighbour_degree=k, ring_bits=bits, frac_bits=10, clip=4.0)
    inputs = exact_inputs(range(1, n + 1), 10, seed=n * 100 + t, clip=4.0)
    out = simulate_round(inputs, params, max_colluders=NO_COLLUDERS)
    assert out.result.survivors == tuple(range(1, n + 1)) and not out.result.dropouts
    check_exact(out, inputs, params)


@pytest.mark.parametrize(("n", "t", "k", "bits"), CONFIGS)
@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_max_dropouts_at_one_stage_exact(n, t, k, bits, stage) -> None:
    """m - t dropouts (the tolerance) at any single stage: still exact."""
    params = SecAggParams(threshold=t, neighbour_degree=k, ring_bits=bits, frac_bits=8)
    ids = list(range(1, n + 1))
    inputs = exact_inputs(ids, 8, seed=n + t + stage)
    tolerance = params.dropout_tolerance(n)
    dropped = ids[-tolerance:] if tolerance else []
    out = simulate_round(inputs, params, drop={c: stage for c in dropped}, max_colluders=NO_COLLUDERS)
    check_exact(out, inputs, params)
    in_sum = set(ids) if stage >= Stage.CONSISTENCY else set(ids) - set(dropped)  # masked input already in
    assert set(out.result.survivors) == in_sum
    assert out.result.dropouts == {c: stage for c in dropped}


# A dropout pattern: every client independently stays or drops before one of the five stages.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(CONFIGS),
    data=st.data(),
)
def test_any_tolerated_pattern_is_exact(config, data) -> None:
    n, t, k, bits = config
    params = SecAggParams(threshold=t, neighbour_degree=k, ring_bits=bits, frac_bits=8)
    ids = list(range(1, n + 1))
    tolerance = params.dropout_tolerance(n)
    dropped = data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=tolerance), label="dropped")
    stages = data.draw(st.lists(st.sampled_from(list(Stage)), min_size=len(dropped), max_size=len(dropped)),
                       label="stages")
    inputs = exact_inputs(ids, 8, seed=data.draw(st.integers(0, 2**32 - 1), label="seed"))
    out = simulate_round(inputs, params, drop=dict(zip(dropped, stages)), max_colluders=NO_COLLUDERS)
    check_exact(out, inputs, params)
    early = {c for c, s in zip(dropped, stages) if s <= Stage.MASKED_INPUT}
    assert set(out.result.survivors) == set(ids) - early


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nt=st.sampled_from([(3, 2), (5, 3), (7, 4), (8, 5)]), data=st.data())
def test_any_pattern_one_beyond_tolerance_aborts_complete_graph(nt, data) -> None:
    n, t = nt
    ids = list(range(1, n + 1))
    dropped = data.draw(st.lists(st.sampled_from(ids), unique=True, min_size=n - t + 1, max_size=n - t + 1))
    stages = data.draw(st.lists(st.sampled_from(list(Stage)), min_size=len(dropped), max_size=len(dropped)))
    rnd = SimulatedRound(exact_inputs(ids, 8, seed=3), SecAggParams(threshold=t, frac_bits=8), max_colluders=NO_COLLUDERS)
    with pytest.raises(ProtocolAbort, match="round aborted, no aggregate"):
        rnd.run(drop=dict(zip(dropped, stages)))
    assert rnd.server.stage is ServerStage.ABORTED
    with pytest.raises(ProtocolAbort):
        rnd.server.result  # noqa: B018


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (7, 4), (10, 6)])
@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_one_dropout_too_many_aborts_complete_graph(n, t, stage) -> None:
    params = SecAggParams(threshold=t, frac_bits=8)
    ids = list(range(1, n + 1))
    drop = {c: stage for c in ids[: n - t + 1]}
    with pytest.raises(ProtocolAbort, match="fewer than the threshold"):
        simulate_round(exact_inputs(ids, 8, seed=1), params, drop=drop, max_colluders=NO_COLLUDERS)


@pytest.mark.parametrize("stage", [s for s in Stage if s is not Stage.ADVERTISE_KEYS], ids=lambda s: s.name)
def test_one_dropout_too_many_in_a_neighbourhood_aborts_sparse_graph(stage) -> None:
    """SecAgg+: m - t + 1 of one client's holders drop -> its secret cannot be rebuilt -> abort."""
    n, t, k = 10, 3, 4  # m = 5 holders per client, tolerance 2
    params = SecAggParams(threshold=t, neighbour_degree=k, frac_bits=8)
    rnd = SimulatedRound(exact_inputs(range(1, n + 1), 8, seed=2), params, max_colluders=NO_COLLUDERS)
    rnd.step()  # keys collected: the session id, hence the graph, is now fixed
    victim = 1
    holders = [h for h in rnd.server.graph.holders(victim) if h != victim]
    assert len(holders) == k
    drop = {h: stage for h in holders[: k + 1 - t + 1]}
    with pytest.raises(ProtocolAbort, match="fewer than the threshold"):
        while rnd.next_stage is not None:
            rnd.step(drop=drop)
    assert rnd.server.stage is ServerStage.ABORTED
    with pytest.raises(ProtocolAbort):
        rnd.server.result  # noqa: B018 - no aggregate after an abort


def test_sum_wraps_the_ring_and_decodes_negative_values() -> None:
    params = SecAggParams(threshold=3, frac_bits=4, clip=8.0)
    inputs = {1: np.full(D, -8.0), 2: np.full(D, -8.0), 3: np.full(D, 7.9375), 4: np.full(D, -0.0625)}
    out = simulate_round(inputs, params, max_colluders=NO_COLLUDERS)
    assert np.array_equal(out.result.values, np.full(D, -8.125))


def test_clipping_is_reported() -> None:
    params = SecAggParams(threshold=2, frac_bits=4, clip=1.0)
    inputs = {1: np.array([0.5, 3.0, -2.0, 0.0]), 2: np.zeros(4), 3: np.zeros(4)}
    out = simulate_round(inputs, params, max_colluders=NO_COLLUDERS)
    assert out.stats[1].clipped == 2 and out.stats[2].clipped == 0
    assert np.array_equal(out.result.values, np.array([0.5, 1.0, -1.0, 0.0]))


def test_bad_input_is_a_caller_error_not_an_abort() -> None:
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import InvalidInput
    from securefed.secagg import ClientStage, SecAggClient
    client = SecAggClient(1, IdentityKeyPair.generate(), max_colluders=NO_COLLUDERS)
    with pytest.raises(InvalidInput, match="NaN"):
        client.set_input(np.array([0.0, np.nan]))
    with pytest.raises(InvalidInput, match="1-D"):
        client.set_input(np.zeros((2, 2)))
    rnd = SimulatedRound({c: np.zeros(4) for c in (1, 2, 3)}, SecAggParams(threshold=2), max_colluders=NO_COLLUDERS)
    rnd.step()
    rnd.step()
    rnd.clients[1]._input = None  # the daemon forgot set_input: refused, state kept, retry works
    with pytest.raises(InvalidInput, match="set_input"):
        rnd.clients[1].handle(rnd.outbox[1])
    assert rnd.clients[1].stage is ClientStage.AWAIT_SHARES
    with pytest.raises(InvalidInput, match="expects 4"):
        rnd.clients[1].set_input(np.zeros(5))
    rnd.clients[1].set_input(np.ones(4))
    rnd.run()
    assert np.array_equal(rnd.server.result.values, np.ones(4))
