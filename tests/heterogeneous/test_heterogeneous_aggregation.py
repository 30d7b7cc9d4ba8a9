"""Members of unequal capacity: the layout's groups, and each strategy's per-parameter aggregate.

Every member uploads the whole layout with zeros where it trained nothing, plus its weighted 0/1
indicator of trained groups; the server's result must equal the per-parameter weighted average over
only the members that trained each parameter, computed here in the clear from the members' own
updates. Under secure aggregation the same sums arrive masked (the round tests below and the
slow end-to-end test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from securefed.errors import ConfigError, InvalidInput
from securefed.heterogeneous.groups import ParameterGroups, layer_of
from securefed.secagg.params import SecAggParams
from securefed.secagg.simulation import simulate_round
from securefed.strategies import FedAvg, FedNova, FedProx, Scaffold, StrategySettings, make_strategy
from securefed.training.config import ClippingMode
from securefed.training.dp import LocalTrainResult

MAX_N = 1000
R = 8  # the federation's LoRA rank
LAYERS = 3


def layout_json(rank: int = R, layers: int = LAYERS, freeze_a: bool = False) -> str:
    """A small LoRA layout shaped like peft's: q (16 -> 16) and v (16 -> 8) in every layer."""
    tensors = []
    for i in range(layers):
        for mod, (fan_in, fan_out) in (("q_proj", (16, 16)), ("v_proj", (16, 8))):
            base = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            if not freeze_a:
                tensors.append({"name": f"{base}.lora_A.default.weight", "shape": [rank, fan_in], "dtype": "float32"})
            tensors.append({"name": f"{base}.lora_B.default.weight", "shape": [fan_out, rank], "dtype": "float32"})
    return json.dumps({"version": 1, "tensors": tensors}, sort_keys=True, separators=(",", ":"))


GROUPS = ParameterGroups.from_layout_json(layout_json())
DIM = GROUPS.dim


def _result(delta, n, steps=5, lr=0.1):
    return LocalTrainResult(delta=np.asarray(delta, dtype=np.float32), num_samples=n, steps=steps, sample_rate=0.1,
                            noise_multiplier=1.0, clip_norm=1.0, secure_rng=True, clipping_mode=ClippingMode.HOOKS,
                            train_loss=1.0, learning_rate=lr, expected_batch_size=4)


def _members(seed: int, capacities):
    """(global, [(delta zero outside what it trained, n, steps, indicator)])."""
    rng = np.random.default_rng(seed)  # not secret: test data
    out = []
    for top, rank in capacities:
        ind = GROUPS.indicator(top_layers=top, rank=rank)
        delta = rng.uniform(-0.3, 0.3, DIM) * GROUPS.expand(ind)
        out.append((delta.astype(np.float32), int(rng.integers(1, MAX_N + 1)), int(rng.integers(1, 9)), ind))
    return rng.normal(size=DIM).astype(np.float32), out


def _clear_average(g, members, numerator):
    """Per parameter: sum over the members that trained it of w_i * numerator_i / sum of their w_i."""
    num = np.zeros(DIM)
    den = np.zeros(DIM)
    for delta, n, steps, ind in members:
        mask = GROUPS.expand(ind)
        num += n * mask * numerator(delta, steps)
        den += n * mask
    return num, den


HETEROGENEOUS_RANKS = [(None, 2), (None, 4), (None, 8)]
HETEROGENEOUS_LAYERS = [(1, None), (2, None), (None, None)]


def test_groups_are_layer_by_rank_slot_and_indicators_cover_the_top_layers():
    assert GROUPS.layers == tuple(f"base_model.model.model.layers.{i}" for i in range(LAYERS))
    assert GROUPS.rank == R and GROUPS.size == LAYERS * R
    assert layer_of("transformer.h.3.attn.c_attn.lora_A.default.weight") == "transformer.h.3"
    assert layer_of("model.encoder.block.0.layer.0.SelfAttention.q.lora_B.default.weight") == "model.encoder.block.0"
    # known answer: layer 0's q lora_A (8 x 16) row j is group j; its lora_B (16 x 8) column j is group j
    a0 = GROUPS.element_group[: R * 16].reshape(R, 16)
    assert (a0 == np.arange(R)[:, None]).all()
    b0 = GROUPS.element_group[R * 16 : R * 16 + 16 * R].reshape(16, R)
    assert (b0 == np.arange(R)[None, :]).all()
    top1_rank2 = GROUPS.indicator(top_layers=1, rank=2).reshape(LAYERS, R)
    assert top1_rank2.sum() == 2 and top1_rank2[-1, :2].all()
    with pytest.raises(InvalidInput):
        GROUPS.indicator(rank=R + 1)
    with pytest.raises(InvalidInput):
        GROUPS.check_indicator(np.zeros(GROUPS.size))


@pytest.mark.parametrize("capacities", [HETEROGENEOUS_RANKS, HETEROGENEOUS_LAYERS], ids=["ranks-2-4-8", "layers-1-2-all"])
@pytest.mark.parametrize("cls", [FedAvg, FedProx])
def test_heterogeneous_fedavg_is_the_per_parameter_weighted_average(cls, capacities):
    g, members = _members(1, capacities)
    s = cls(dim=DIM, max_samples=MAX_N, delta_bound=1.0, groups=GROUPS)
    payloads = [s.client_payload(_result(d, n, t), trained=ind).vector for d, n, t, ind in members]
    assert {p.size for p in payloads} == {s.payload_size} == {DIM + 1 + GROUPS.size}  # one size whatever was trained
    upd = s.server_apply(g, np.sum(payloads, axis=0), len(payloads))
    num, den = _clear_average(g, members, lambda d, t: d)
    ref = g + np.divide(num, den, out=np.zeros(DIM), where=den > 0)
    np.testing.assert_allclose(upd.global_vec, ref, rtol=1e-6, atol=1e-6)
    # negative control: the plain strategy divides by every member's weight, which is not that average
    plain = cls(dim=DIM, max_samples=MAX_N, delta_bound=1.0)
    wrong = plain.server_apply(g, np.sum([plain.client_payload(_result(d, n, t)).vector for d, n, t, _ in members],
                                         axis=0), len(members)).global_vec
    assert np.max(np.abs(wrong - ref)) > 1e-3


def test_heterogeneous_fednova_normalises_each_parameter_over_its_trainers():
    g, members = _members(2, HETEROGENEOUS_LAYERS)
    s = FedNova(dim=DIM, max_samples=MAX_N, delta_bound=1.0, tau_max=10, groups=GROUPS)
    payloads = [s.client_payload(_result(d, n, t), trained=ind).vector for d, n, t, ind in members]
    upd = s.server_apply(g, np.sum(payloads, axis=0), len(payloads))
    num, den = _clear_average(g, members, lambda d, t: d / t)
    tau_num, _ = _clear_average(g, members, lambda d, t: np.full(DIM, float(t)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = g + np.where(den > 0, (tau_num / den) * num / den, 0.0)
    np.testing.assert_allclose(upd.global_vec, ref, rtol=1e-6, atol=1e-6)


def test_heterogeneous_scaffold_moves_c_only_over_its_trainers():
    g, members = _members(3, HETEROGENEOUS_RANKS)
    s = Scaffold(dim=DIM, max_samples=MAX_N, delta_bound=1.0, control_bound=100.0, total_clients=6, groups=GROUPS)
    c = np.zeros(DIM, np.float32)
    pays = [s.client_payload(_result(d, n, t), client_state=np.zeros(DIM, np.float32), server_state=c, trained=ind)
            for d, n, t, ind in members]
    for p, (_, _, _, ind) in zip(pays, members):
        assert np.all(p.client_state[GROUPS.expand(ind) == 0] == 0)  # c_i does not move where it did not train
    upd = s.server_apply(g, np.sum([p.vector for p in pays], axis=0), len(pays), c)
    trainers = sum(GROUPS.expand(ind) for *_, ind in members)
    dc = sum(p.client_state.astype(np.float64) for p in pays)
    ref_c = np.where(trainers > 0, dc / np.maximum(6 * trainers / len(members), 1e-300), 0.0)
    np.testing.assert_allclose(upd.server_state, ref_c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["fedavg", "fedprox", "scaffold", "fednova"])
def test_heterogeneous_with_every_member_whole_equals_the_plain_strategy(kind):
    g, members = _members(4, [(None, None)] * 3)
    args = dict(kind=kind, max_samples=MAX_N, total_clients=3)
    plain = make_strategy(StrategySettings(**args), dim=DIM)
    het = make_strategy(StrategySettings(**args, heterogeneous=True), dim=DIM, layout_json=layout_json())
    c = plain.initial_server_state()
    outs = []
    for s in (plain, het):
        pays = [s.client_payload(_result(d, n, t), client_state=c, server_state=c).vector for d, n, t, _ in members]
        outs.append(s.server_apply(g, np.sum(pays, axis=0), len(pays), c))
    np.testing.assert_allclose(outs[1].global_vec, outs[0].global_vec, rtol=0, atol=1e-7)


def test_a_parameter_nobody_trained_keeps_its_global_value_and_partial_is_refused_without_heterogeneous():
    g, members = _members(5, [(1, None), (1, 2)])  # nobody trains layers 0 and 1
    s = FedAvg(dim=DIM, max_samples=MAX_N, delta_bound=1.0, groups=GROUPS)
    upd = s.server_apply(g, np.sum([s.client_payload(_result(d, n), trained=ind).vector for d, n, _, ind in members],
                                   axis=0), 2)
    untouched = GROUPS.expand(sum(ind for *_, ind in members)) == 0
    assert untouched.sum() > 0 and np.array_equal(upd.global_vec[untouched], g[untouched])
    with pytest.raises(InvalidInput, match="heterogeneous = false"):
        FedAvg(dim=DIM, max_samples=MAX_N, delta_bound=1.0).client_payload(_result(*members[0][:2]),
                                                                          trained=members[0][3])
    with pytest.raises(ConfigError, match="layout"):  # a heterogeneous payload needs the groups
        _ = make_strategy(StrategySettings(heterogeneous=True), dim=DIM).payload_size


@pytest.mark.parametrize("capacities", [HETEROGENEOUS_RANKS, HETEROGENEOUS_LAYERS], ids=["ranks-2-4-8", "layers-1-2-all"])
def test_heterogeneous_round_under_secure_aggregation_equals_the_clear_average(capacities):
    """The payloads masked, summed and unmasked by the real SecAgg state machines (fixed point, ring
    2^64): the aggregate is the per-parameter weighted average to fixed-point precision."""
    g, members = _members(6, capacities)
    s = FedAvg(dim=DIM, max_samples=MAX_N, delta_bound=1.0, groups=GROUPS)
    inputs = {i + 1: s.client_payload(_result(d, n), trained=ind).vector for i, (d, n, _, ind) in enumerate(members)}
    params = SecAggParams(threshold=2, ring_bits=64, frac_bits=32, clip=s.payload_bound())
    out = simulate_round(inputs=inputs, params=params, max_colluders=0)
    upd = s.server_apply(g, np.asarray(out.result.values), len(inputs))
    num, den = _clear_average(g, members, lambda d, t: d)
    ref = g + np.divide(num, den, out=np.zeros(DIM), where=den > 0)
    np.testing.assert_allclose(upd.global_vec, ref, rtol=0, atol=1e-6)


def test_heterogeneous_off_leaves_the_bound_settings_json_as_before():
    """Federations started before the key existed resume: their settings JSON (in every bundle digest,
    compared when the coordinator resumes) does not gain it while it is false."""
    assert "heterogeneous" not in StrategySettings().model_dump(mode="json")
    assert StrategySettings(heterogeneous=True).model_dump(mode="json")["heterogeneous"] is True
    assert StrategySettings.model_validate(StrategySettings().model_dump(mode="json")) == StrategySettings()

