"""A server that keeps asking for rounds cannot push a client past its own budget.

The client's guard reads prior spending only from its signed ledger and projects the planned round with
the client's own accountant and delta; the server chooses nothing in that computation. However many
rounds are offered, the verified ledger never accounts more than the target.
"""

from __future__ import annotations

import pytest

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import BudgetExceeded, ConfigError
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.budget import BudgetGuard, PrivacyBudget
from securefed.privacy.events import DpEvent, LibraryVersions
from securefed.privacy.ledger import Ledger, load_ledger

BUDGET = PrivacyBudget(target_epsilon=2.0, delta=1e-5)


def _planned(round_id: int, *, sigma=1.5, q=0.02, steps=50, accountant="rdp", delta=1e-5) -> DpEvent:
    return DpEvent(client_id="org-a", round_id=round_id, noise_multiplier=sigma, sample_rate=q, steps=steps,
                   delta=delta, clip_norm=1.0, accountant=accountant, secure_rng=True,
                   library_versions=LibraryVersions(opacus="1.6.0", torch="2.13.0", securefed="0.1.0"),
                   config_hash="ef" * 32, timestamp="2026-11-28T05:00:00.000000Z")


def test_endless_rounds_stop_at_the_budget_and_the_ledger_never_exceeds_it(tmp_path):
    path = tmp_path / "ledger.sqlite"
    guard = BudgetGuard(BUDGET)
    accepted = declined = 0
    with Ledger.create(path, IdentityKeyPair.generate(), client_id="org-a", budget=BUDGET) as ledger:
        for r in range(40):  # the server offers round after round
            planned = _planned(r)
            try:
                guard.check(ledger.events(), planned)
            except BudgetExceeded:
                declined += 1
                continue  # declined: nothing trained, nothing appended
            ledger.append(planned)  # write-ahead, as the daemon does before releasing
            accepted += 1
    eps = compute_epsilon(load_ledger(path).events, BUDGET.delta, "rdp")
    assert accepted >= 1 and declined >= 1
    assert eps <= BUDGET.target_epsilon
    # One more round of the same kind would have passed the budget: the guard stopped at the edge.
    assert compute_epsilon([*load_ledger(path).events, _planned(99)], BUDGET.delta, "rdp") > BUDGET.target_epsilon


@pytest.mark.parametrize("change", [dict(accountant="prv"), dict(delta=1e-3)])
def test_a_round_accounted_with_another_accountant_or_delta_is_refused(change):
    # A plan cannot smuggle in a looser accountant or a larger delta than the client's budget.
    with pytest.raises(ConfigError):
        BudgetGuard(BUDGET).check([], _planned(0, **change))


def test_a_single_greedy_round_is_declined_even_with_nothing_spent():
    # A plan asking for many steps at a high sample rate (more than the whole budget) is declined at once.
    with pytest.raises(BudgetExceeded):
        BudgetGuard(BUDGET).check([], _planned(0, sigma=0.6, q=0.5, steps=500))


@pytest.mark.parametrize("sampler", ["shuffle", "fixed_size", "uniform"])
def test_a_round_trained_without_poisson_sampling_cannot_be_accounted(sampler):
    # The subsampled-Gaussian accountants assume Poisson sampling; anything else is refused, not
    # under-counted (so it can never pass the guard or reach the ledger).
    import dataclasses

    from securefed.errors import AccountingError

    with pytest.raises(AccountingError):
        dataclasses.replace(_planned(0), sampler=sampler)
