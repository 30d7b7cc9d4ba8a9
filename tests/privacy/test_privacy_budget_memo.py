"""The client's per-round budget check is cheap after the first round: the one-step RDP curve of a
mechanism is memoised in ``privacy.formulas`` (a change made for the daemons), bit-identical to Opacus."""

from __future__ import annotations

import numpy as np
from opacus.accountants.analysis import rdp as opacus_rdp

from securefed.privacy import formulas
from securefed.privacy.formulas import DEFAULT_RDP_ORDERS, SubsampledGaussian, rdp_curve


def test_memoised_rdp_curve_is_bit_identical_to_opacus():
    for sigma, q, steps in [(0.38, 0.004, 4), (1.1, 0.01, 1000), (2.0, 0.3, 7), (0.9, 1.0, 3)]:
        want = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                                 orders=list(DEFAULT_RDP_ORDERS)))
        for _ in range(2):  # computed, then from the cache
            assert np.array_equal(rdp_curve([SubsampledGaussian(sigma, q, steps)]), want)
    # Composition of repeated rounds: merged steps times the one-step curve, as Opacus does it.
    mech = [SubsampledGaussian(1.1, 0.01, 10)] * 3
    want = np.asarray(opacus_rdp.compute_rdp(q=0.01, noise_multiplier=1.1, steps=30, orders=list(DEFAULT_RDP_ORDERS)))
    assert np.array_equal(rdp_curve(mech), want)


def test_repeated_budget_checks_reuse_the_one_step_curve():
    from securefed.privacy.budget import BudgetGuard, PrivacyBudget
    from securefed.privacy.events import DpEvent, LibraryVersions, utc_timestamp

    def ev(r):
        return DpEvent(client_id="m", round_id=r, noise_multiplier=0.77, sample_rate=0.0123, steps=5, delta=1e-6,
                       clip_norm=1.0, accountant="rdp", secure_rng=True, library_versions=LibraryVersions.current(),
                       config_hash="0" * 64, timestamp=utc_timestamp())

    guard = BudgetGuard(PrivacyBudget(target_epsilon=50.0, delta=1e-6))
    formulas._one_step_rdp.cache_clear()
    p1 = guard.project([ev(0)], ev(1))
    misses = formulas._one_step_rdp.cache_info().misses
    p2 = guard.project([ev(0), ev(1)], ev(2))
    assert formulas._one_step_rdp.cache_info().misses == misses == 1  # one mechanism, computed once
    assert p1.epsilon_after == p2.epsilon_before and p2.epsilon_after > p1.epsilon_after
