"""Accountants: Opacus reference numbers, heterogeneous composition, registry, refusal of the unknown."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
from privacy_helpers import make_event

from securefed.errors import AccountingError
from securefed.privacy import formulas
from securefed.privacy.accountants import (
    ACCOUNTANTS,
    PrvAccountant,
    RdpAccountant,
    accountant_class,
    compute_epsilon,
    create_accountant,
    cumulative_epsilons,
)
from securefed.privacy.events import AccountantName
from securefed.privacy.formulas import SubsampledGaussian

# Opacus' documented reference run.
REF = SubsampledGaussian(1.5, 0.04, 2250)
REF_DELTA = 1e-5


def test_formulas_doctests_pass():
    failures, tried = doctest.testmod(formulas, optionflags=doctest.ELLIPSIS)
    assert tried >= 8 and failures == 0


def test_default_orders_are_opacus_orders():
    from opacus.accountants import RDPAccountant

    assert list(formulas.DEFAULT_RDP_ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)


def test_rdp_reference_digits_match_opacus_itself():
    from opacus.accountants import RDPAccountant

    ours = formulas.rdp_epsilon([REF], REF_DELTA)
    assert ours == pytest.approx(7.3291, abs=5e-5)
    assert f"{ours:.4f}" == "7.3291"
    acc = RDPAccountant()
    acc.history = [(REF.noise_multiplier, REF.sample_rate, REF.steps)]
    assert ours == acc.get_epsilon(delta=REF_DELTA)  # bit-identical: same code path


def test_prv_reference_matches_opacus_itself():
    from opacus.accountants import PRVAccountant

    ours = formulas.prv_epsilon([REF], REF_DELTA)
    assert ours == pytest.approx(6.78, abs=0.01)
    acc = PRVAccountant()
    acc.history = [(REF.noise_multiplier, REF.sample_rate, REF.steps)]
    assert ours == pytest.approx(acc.get_epsilon(delta=REF_DELTA), rel=1e-12)
    assert ours < formulas.rdp_epsilon([REF], REF_DELTA)  # PRV is the tighter bound here


HETERO = [SubsampledGaussian(1.5, 0.04, 1000), SubsampledGaussian(1.2, 0.02, 700), SubsampledGaussian(2.0, 0.05, 500)]


def test_rdp_heterogeneous_composition_sums_curves_like_opacus_history():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [tuple(m) for m in HETERO]
    assert formulas.rdp_epsilon(HETERO, REF_DELTA) == pytest.approx(acc.get_epsilon(delta=REF_DELTA), rel=1e-12)
    # and it is the sum of the individual curves, converted once
    curve = sum(formulas.rdp_curve([m]) for m in HETERO)
    assert formulas.rdp_to_epsilon(curve, REF_DELTA) == pytest.approx(formulas.rdp_epsilon(HETERO, REF_DELTA))


def test_prv_heterogeneous_composition_matches_opacus_history():
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [tuple(m) for m in HETERO]
    ours = formulas.prv_epsilon(HETERO, REF_DELTA)
    assert ours == pytest.approx(acc.get_epsilon(delta=REF_DELTA), rel=1e-9)
    # composing more mechanisms never lowers epsilon, and the mix sits between its parts' bounds
    assert ours > formulas.prv_epsilon(HETERO[:2], REF_DELTA)
    assert ours <= formulas.rdp_epsilon(HETERO, REF_DELTA)


def test_splitting_a_run_into_rounds_changes_nothing():
    rounds = [SubsampledGaussian(1.5, 0.04, 225)] * 10
    assert formulas.rdp_epsilon(rounds, REF_DELTA) == pytest.approx(formulas.rdp_epsilon([REF], REF_DELTA), rel=1e-12)
    assert formulas.prv_epsilon(rounds, REF_DELTA) == pytest.approx(formulas.prv_epsilon([REF], REF_DELTA), rel=1e-12)


def test_registry_maps_names_to_classes_and_refuses_unknown():
    assert accountant_class("rdp") is RdpAccountant
    assert accountant_class("PRV") is PrvAccountant
    assert set(ACCOUNTANTS) == set(AccountantName)
    with pytest.raises(AccountingError, match="unknown accountant 'gdp'"):
        accountant_class("gdp")


def test_cumulative_epsilons_match_prefix_compositions():
    events = [make_event(round_id=r, noise_multiplier=s) for r, s in enumerate([1.5, 1.2, 2.0])]
    for name in ("rdp", "prv"):
        cum = cumulative_epsilons(events, REF_DELTA, name)
        assert len(cum) == 3 and cum == sorted(cum)
        for i in range(3):
            assert cum[i] == pytest.approx(compute_epsilon(events[: i + 1], REF_DELTA, name), rel=1e-9)


class AccountantContract:
    """Every accountant must pass this suite (same inputs, same refusals)."""

    cls: type

    def test_empty_is_zero(self):
        assert self.cls().epsilon(REF_DELTA) == 0.0

    def test_compose_and_epsilon_of_agree(self):
        events = [make_event(round_id=r) for r in range(3)]
        acc = self.cls()
        for e in events:
            acc.compose(e)
        assert len(acc) == 3 and acc.events == tuple(events)
        assert acc.epsilon(REF_DELTA) == self.cls.epsilon_of(events, REF_DELTA) > 0

    def test_zero_noise_is_infinite_and_zero_rate_is_free(self):
        assert math.isinf(self.cls([make_event(noise_multiplier=0.0)]).epsilon(REF_DELTA))
        assert self.cls([make_event(sample_rate=0.0)]).epsilon(REF_DELTA) == 0.0
        assert self.cls([make_event(steps=0)]).epsilon(REF_DELTA) == 0.0

    def test_unknown_event_is_refused_and_leaves_state_unchanged(self):
        acc = self.cls([make_event()])
        before = acc.epsilon(REF_DELTA)

        @dataclasses.dataclass(frozen=True)
        class LaplaceEvent:
            scale: float = 1.0

        with pytest.raises(AccountingError, match="cannot account for LaplaceEvent"):
            acc.compose(LaplaceEvent())
        with pytest.raises(AccountingError):
            acc.compose((1.5, 0.04, 100))  # an untyped Opacus-style tuple is not an event
        assert len(acc) == 1 and acc.epsilon(REF_DELTA) == before

    def test_non_poisson_event_forced_past_validation_is_refused(self):
        from securefed.privacy.events import Sampler

        e = make_event()
        object.__setattr__(e, "sampler", Sampler.SHUFFLE)  # bypass construction-time validation
        with pytest.raises(AccountingError, match="Poisson"):
            self.cls([e])

    def test_created_by_name(self):
        assert type(create_accountant(self.cls.name.value)) is self.cls


class TestRdpContract(AccountantContract):
    cls = RdpAccountant


class TestPrvContract(AccountantContract):
    cls = PrvAccountant


def test_bad_delta_is_refused():
    with pytest.raises(AccountingError, match="delta"):
        formulas.rdp_epsilon([REF], 0.0)
    with pytest.raises(AccountingError, match="delta"):
        formulas.prv_epsilon([REF], 1.0)
