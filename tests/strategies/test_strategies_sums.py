"""Each strategy's server_apply(sum of payloads) equals the reference algorithm on individual updates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.config import parse_model
from securefed.errors import ConfigError, InvalidInput
from securefed.strategies import (
    FedAvg,
    FedNova,
    FedProx,
    Scaffold,
    Strategy,
    StrategyKind,
    StrategySettings,
    check_secure_aggregation,
    load_vector,
    make_strategy,
    save_vector,
)
from securefed.training.config import ClippingMode
from securefed.training.dp import LocalTrainResult

DIM = 50
MAX_N = 1000


def _result(delta, n, steps=5, lr=0.1):
    return LocalTrainResult(
        delta=np.asarray(delta, dtype=np.float32), num_samples=n, steps=steps, sample_rate=0.1,
        noise_multiplier=1.0, clip_norm=1.0, secure_rng=True, clipping_mode=ClippingMode.GHOST,
        train_loss=1.0, learning_rate=lr, expected_batch_size=4,
    )


def _clients(seed, k=4, scale=0.3):
    rng = np.random.default_rng(seed)  # not secret: test data
    deltas = [rng.uniform(-scale, scale, DIM).astype(np.float32) for _ in range(k)]
    ns = [int(x) for x in rng.integers(1, MAX_N + 1, k)]
    steps = [int(x) for x in rng.integers(1, 20, k)]
    g = rng.normal(size=DIM).astype(np.float32)
    return g, deltas, ns, steps


def _sum(payloads):
    return np.sum([p.vector for p in payloads], axis=0)


@pytest.mark.parametrize("cls", [FedAvg, FedProx])
def test_fedavg_matches_weighted_mean(cls):
    g, deltas, ns, steps = _clients(1)
    s = cls(dim=DIM, max_samples=MAX_N, delta_bound=1.0)
    payloads = [s.client_payload(_result(d, n, t)) for d, n, t in zip(deltas, ns, steps)]
    assert all(p.vector.shape == (s.payload_size,) for p in payloads)
    upd = s.server_apply(g, _sum(payloads), len(payloads))
    ref = g.astype(np.float64) + sum(n * d.astype(np.float64) for n, d in zip(ns, deltas)) / sum(ns)
    np.testing.assert_allclose(upd.global_vec, ref, rtol=1e-6, atol=1e-6)
    assert upd.global_vec.dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    server_lr=st.floats(0.1, 2.0),
)
def test_fedavg_property(k, seed, server_lr):
    g, deltas, ns, _ = _clients(seed, k)
    s = FedAvg(dim=DIM, max_samples=MAX_N, delta_bound=1.0, server_lr=server_lr)
    upd = s.server_apply(g, _sum([s.client_payload(_result(d, n)) for d, n in zip(deltas, ns)]), k)
    ref = g + server_lr * sum(n * d.astype(np.float64) for n, d in zip(ns, deltas)) / sum(ns)
    np.testing.assert_allclose(upd.global_vec, ref, rtol=1e-5, atol=1e-5)


def test_scaffold_matches_reference_and_control_rule():
    g, deltas, ns, steps = _clients(2)
    lr = 0.05
    rng = np.random.default_rng(3)  # not secret
    c = rng.uniform(-0.1, 0.1, DIM).astype(np.float32)
    cis = [rng.uniform(-0.1, 0.1, DIM).astype(np.float32) for _ in deltas]
    total = 10
    s = Scaffold(dim=DIM, max_samples=MAX_N, delta_bound=1.0, control_bound=100.0, total_clients=total)
    payloads = [
        s.client_payload(_result(d, n, t, lr), client_state=ci, server_state=c)
        for d, n, t, ci in zip(deltas, ns, steps, cis)
    ]
    # Control-variate rule (option II): c_i+ = c_i - c + (x - y_i) / (K lr), with y_i = x + delta_i.
    for p, d, t, ci in zip(payloads, deltas, steps, cis):
        ci_plus = ci.astype(np.float64) - c + (-d.astype(np.float64)) / (t * lr)
        np.testing.assert_allclose(p.client_state, ci_plus, rtol=1e-5, atol=1e-5)
    upd = s.server_apply(g, _sum(payloads), len(payloads), server_state=c)
    ref_x = g + sum(n * d.astype(np.float64) for n, d in zip(ns, deltas)) / sum(ns)
    ref_c = c + sum(p.client_state.astype(np.float64) - ci for p, ci in zip(payloads, cis)) / total
    np.testing.assert_allclose(upd.global_vec, ref_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(upd.server_state, ref_c, rtol=1e-5, atol=1e-6)
    # Client hook: the gradient correction is c - c_i.
    hook = s.client_hooks(client_state=cis[0], server_state=c)
    np.testing.assert_allclose(hook.correction(None, None).numpy(), c - cis[0], rtol=1e-7)


def test_scaffold_control_clip_keeps_client_state_consistent():
    s = Scaffold(dim=DIM, max_samples=MAX_N, delta_bound=1.0, control_bound=0.5)
    p = s.client_payload(_result(np.full(DIM, 0.9), 10, steps=1, lr=0.01))  # raw delta_c = -90
    assert np.max(np.abs(p.vector)) <= s.payload_bound()
    np.testing.assert_allclose(p.client_state, -0.5)  # c_i + clipped delta_c, what the server summed


def test_fednova_matches_formula():
    g, deltas, ns, steps = _clients(4, k=5)
    s = FedNova(dim=DIM, max_samples=MAX_N, delta_bound=1.0, tau_max=32)
    payloads = [s.client_payload(_result(d, n, t)) for d, n, t in zip(deltas, ns, steps)]
    upd = s.server_apply(g, _sum(payloads), len(payloads))
    p = np.array(ns, dtype=np.float64) / sum(ns)
    tau_eff = float(np.dot(p, steps))
    ref = g + tau_eff * sum(pi * d.astype(np.float64) / t for pi, d, t in zip(p, deltas, steps))
    np.testing.assert_allclose(upd.global_vec, ref, rtol=1e-6, atol=1e-6)
    # With equal local steps FedNova reduces to FedAvg.
    fa = FedAvg(dim=DIM, max_samples=MAX_N, delta_bound=1.0)
    same = [s.client_payload(_result(d, n, 7)) for d, n in zip(deltas, ns)]
    np.testing.assert_allclose(
        s.server_apply(g, _sum(same), 5).global_vec,
        fa.server_apply(g, _sum([fa.client_payload(_result(d, n)) for d, n in zip(deltas, ns)]), 5).global_vec,
        rtol=1e-5, atol=1e-6,
    )
    with pytest.raises(InvalidInput, match="tau_max"):
        s.client_payload(_result(deltas[0], 10, steps=33))


@pytest.mark.parametrize("kind", list(StrategyKind), ids=lambda k: k.value)
def test_payload_bound_holds_for_huge_updates(kind):
    s = make_strategy(StrategySettings(kind=kind, max_samples=100, delta_bound=0.25, control_bound=0.5, tau_max=10),
                      dim=DIM)
    delta = np.linspace(-50, 50, DIM).astype(np.float32)
    p = s.client_payload(_result(delta, 10_000, steps=3, lr=0.001), client_state=None, server_state=None)
    assert p.vector.shape == (s.payload_size,)
    assert np.max(np.abs(p.vector)) <= s.payload_bound()
    # The weight is clamped to 1 for a client above the declared max_samples.
    assert p.vector[-1] == 1.0


@pytest.mark.parametrize("kind", list(StrategyKind), ids=lambda k: k.value)
def test_server_apply_rejects_bad_sums(kind):
    s = make_strategy(StrategySettings(kind=kind), dim=DIM)
    g = np.zeros(DIM, dtype=np.float32)
    good = s.client_payload(_result(np.zeros(DIM), 10)).vector
    with pytest.raises(InvalidInput, match="shape"):
        s.server_apply(g, good[:-1], 1)
    bad = good.copy()
    bad[0] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        s.server_apply(g, bad, 1)
    with pytest.raises(InvalidInput, match="weight is 0"):
        s.server_apply(g, np.zeros_like(good), 1)
    with pytest.raises(InvalidInput, match="payload_bound"):
        s.server_apply(g, good * 0 + 5 * s.payload_bound(), 2)
    with pytest.raises(InvalidInput, match="shape"):
        s.client_payload(_result(np.zeros(DIM + 1), 10))


def test_refuse_individual_update_strategy_under_secure_aggregation():
    class Median(FedAvg):  # a robust aggregator would need each update
        requires_individual_updates = True

    s = Median(dim=DIM, max_samples=10, delta_bound=1.0)
    check_secure_aggregation(s, secure_aggregation=False)
    with pytest.raises(ConfigError, match="secure aggregation"):
        check_secure_aggregation(s, secure_aggregation=True)
    for kind in StrategyKind:
        check_secure_aggregation(make_strategy(StrategySettings(kind=kind), dim=DIM), secure_aggregation=True)


def test_settings_and_state_files(tmp_path):
    cfg = parse_model(StrategySettings, {"kind": "scaffold", "total_clients": 5})
    s = make_strategy(cfg, dim=DIM)
    assert isinstance(s, Scaffold) and s.total_clients == 5
    with pytest.raises(ConfigError, match="kind"):
        parse_model(StrategySettings, {"kind": "krum"})
    v = np.arange(DIM, dtype=np.float32) / 7
    save_vector(tmp_path / "c.npy", v)
    assert load_vector(tmp_path / "c.npy", DIM).tobytes() == v.tobytes()
    with pytest.raises(InvalidInput, match="length"):
        load_vector(tmp_path / "c.npy", DIM + 1)
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InvalidInput):
        load_vector(tmp_path / "bad.npy", DIM)
    with pytest.raises(ConfigError):
        FedAvg(dim=DIM, max_samples=0, delta_bound=1.0)
    assert issubclass(FedNova, Strategy)
