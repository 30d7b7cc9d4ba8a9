"""The simulation on the local engine: reproducible runs, CSPRNG runs, budgets, cohorts, dropouts and the
secure sum, on the member's real path and the real state machines."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import small_settings

from securefed.errors import ConfigError
from securefed.secagg import Stage
from securefed.simulation.aggregation import secagg_sum
from securefed.simulation.draws import draw_round
from securefed.simulation.driver import Simulation
from securefed.simulation.engine import LocalEngine
from securefed.simulation.member import Workspace


def run(workspace, settings, **kw):
    return Simulation(settings, workspace, **kw).run(LocalEngine(workspace))


def test_reproducible_runs_repeat_bit_for_bit_and_members_share_one_model(workspace, sim_model):
    settings = small_settings(sim_model, dropout_rate=0.2)
    loaded = Workspace.models_loaded
    a, b = run(workspace, settings), run(workspace, settings)
    assert [r.aggregate_sha256 for r in a] == [r.aggregate_sha256 for r in b]
    assert [r.heldout_loss for r in a] == [r.heldout_loss for r in b]
    assert a[-1].epsilon_per_member == b[-1].epsilon_per_member
    assert a[1].aggregate_sha256 != a[0].aggregate_sha256  # training moved the adapter
    assert Workspace.models_loaded == loaded  # 6 members x 2 rounds x 2 runs: no second base model


def test_csprng_noise_differs_between_runs_while_the_accounting_does_not(workspace, sim_model):
    settings = small_settings(sim_model, reproducible=False, rounds=1)
    a, b = run(workspace, settings), run(workspace, settings)
    assert a[-1].noise == "csprng"
    assert a[-1].aggregate_sha256 != b[-1].aggregate_sha256  # fresh noise, fresh batches
    assert a[-1].epsilon_per_member == b[-1].epsilon_per_member
    assert all(0 < e <= 3.0 for e in a[-1].epsilon_per_member)


def test_a_member_declines_what_its_budget_cannot_pay_and_epsilon_stays_within_target(workspace, sim_model):
    # Noise calibrated for one release, two rounds: every member declines the second.
    records = run(workspace, small_settings(sim_model, member_rounds=1))
    first, second = records[1], records[2]
    assert first.summed == 6 and first.aborted is None
    assert second.declined == 6 and second.summed == 0 and "accepted" in second.aborted
    assert second.aggregate_sha256 == first.aggregate_sha256  # nothing applied
    assert max(second.epsilon_per_member) <= 3.0


def test_the_cohort_samples_members_and_only_sampled_members_spend(workspace, sim_model):
    records = run(workspace, small_settings(sim_model, cohort_fraction=0.5, rounds=1))
    last = records[-1]
    draw = draw_round(0, 1, 6, 3, 0.0)
    assert last.cohort == 3 and last.summed == 3 and last.threshold == 3  # all 3 of 3 (one colluder assumed)
    spent = {m for m, e in enumerate(last.epsilon_per_member) if e is not None}
    assert spent == set(draw.cohort)


def test_dropouts_past_the_threshold_abort_the_round_and_release_nothing(workspace, sim_model):
    records = run(workspace, small_settings(sim_model, dropout_rate=0.9, rounds=1, seed=3))
    last = records[-1]
    assert last.dropouts >= 4 and last.aborted
    assert last.aggregate_sha256 == records[0].aggregate_sha256


def test_the_draws_are_seeded_and_follow_the_rates():
    a, b = draw_round(7, 2, 1000, 300, 0.1), draw_round(7, 2, 1000, 300, 0.1)
    assert a == b and len(a.cohort) == 300 == len(set(a.cohort))
    assert 10 <= len(a.drops) <= 60 and set(a.drops) <= set(a.cohort)
    assert draw_round(8, 2, 1000, 300, 0.1).cohort != a.cohort


@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY,
                                   Stage.UNMASK])
def test_the_secure_sum_is_the_sum_of_exactly_the_members_that_sent(stage):
    rng = np.random.default_rng(1)  # not secret: test inputs
    cohort = [0, 2, 4, 5, 7, 9]
    payloads = {m: rng.uniform(-1, 1, 64) for m in cohort}
    dropped = {4: stage} if stage in (Stage.CONSISTENCY, Stage.UNMASK) else {4: stage}
    if stage < Stage.MASKED_INPUT:
        del payloads[4]  # a member that drops before it masks never trained in the simulation
    out = secagg_sum(cohort, payloads, dropped, length=64, bound=1.0, max_colluders=1, round_id=1)
    expected = [m for m in cohort if m != 4 or stage >= Stage.CONSISTENCY]
    assert out.contributors == tuple(expected) and out.aborted is None
    np.testing.assert_allclose(out.values, sum(payloads[m] for m in expected), atol=len(expected) * 2.0**-24)


def test_reproducible_mode_makes_the_secure_sum_bit_exact_and_the_csprng_does_not():
    rng = np.random.default_rng(2)  # not secret: test inputs
    payloads = {m: rng.uniform(-1, 1, 256) for m in range(5)}
    kw = dict(length=256, bound=1.0, max_colluders=1, round_id=1)
    seeded = [secagg_sum(list(payloads), payloads, {}, seed_key=bytes(32), **kw).values for _ in range(2)]
    fresh = [secagg_sum(list(payloads), payloads, {}, **kw).values for _ in range(2)]
    assert np.array_equal(seeded[0], seeded[1])
    assert not np.array_equal(fresh[0], fresh[1])  # stochastic rounding from fresh keys
    np.testing.assert_allclose(fresh[0], seeded[0], atol=5 * 2.0**-24)


def test_refusals_before_anything_trains(workspace, sim_model):
    with pytest.raises(ConfigError, match="at least 3 members per round"):
        Simulation(small_settings(sim_model, cohort_fraction=0.3), workspace).check()
    with pytest.raises(ConfigError, match="--epsilon 0.01: .*unreachable"):
        Simulation(small_settings(sim_model, epsilons=(0.01,)), workspace).check()
    with pytest.raises(ConfigError, match="--reproducible needs --mode secagg"):
        Simulation(small_settings(sim_model, mode="ckks"), workspace).check()
    with pytest.raises(ConfigError, match="--delta 0.1 is not below"):
        Simulation(small_settings(sim_model, delta=0.1), workspace).check()
    Simulation(small_settings(sim_model, cohort_fraction=0.3, mode="plaintext"), workspace).check()


def test_ckks_and_plaintext_modes_sum_the_same_members(workspace, sim_model):
    # CKKS cannot be seeded; its sum is the plain one to within CKKS noise, so the held-out loss agrees closely.
    ckks = run(workspace, small_settings(sim_model, mode="ckks", reproducible=False, rounds=1))[-1]
    plain = run(workspace, small_settings(sim_model, mode="plaintext", rounds=1))[-1]
    assert ckks.summed == plain.summed == 6 and ckks.aborted is None and ckks.threshold == 4
    assert ckks.mode == "ckks" and abs(ckks.heldout_loss - plain.heldout_loss) < 0.05
