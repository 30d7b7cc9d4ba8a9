"""Epsilon by a second, independent implementation: Google's ``dp-accounting`` (RDP and PLD).

The auditor's ``verify`` recomputes every ledger's epsilon with these; the member's noise calibration
(``budget.calibrate_noise``) checks its result with them too, so that a run calibrated to a target
stays within it by *both* accountants (dp-accounting's fractional orders are looser than Opacus',
by about 1e-3 relative at epsilon 8, and its PLD bound sits about 0.01 above Opacus' PRV estimate).

Functions take mechanisms ``(sigma, q, steps)`` (``formulas.SubsampledGaussian``); the ``*_epsilon``
wrappers take ``DpEvent`` logs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import dp_accounting
from absl import logging as absl_logging
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from securefed.privacy.events import AccountantName, DpEvent, parse_accountant_name
from securefed.privacy.formulas import DEFAULT_RDP_ORDERS, SubsampledGaussian, merge

PLD_DISCRETIZATION = 1e-3


def _dp_events(mechanisms: Iterable[SubsampledGaussian]):
    for sigma, q, steps in merge(mechanisms):
        yield dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps


def rdp_epsilon_of(mechanisms: Iterable[SubsampledGaussian], delta: float,
                   orders: Sequence[float] = DEFAULT_RDP_ORDERS) -> float:
    """Epsilon by ``dp_accounting.rdp.RdpAccountant`` over ``orders``."""
    # dp-accounting warns (once per order) when its series for fractional orders < 2 does not converge and
    # drops those orders; callers already say its fractional orders are looser, so keep terminals readable.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        acc = RdpAccountant(orders=list(orders))
        for ev, steps in _dp_events(mechanisms):
            acc.compose(ev, steps)
        return float(acc.get_epsilon(delta))
    finally:
        absl_logging.set_verbosity(verbosity)


def pld_epsilon_of(mechanisms: Iterable[SubsampledGaussian], delta: float) -> float:
    """Epsilon by ``dp_accounting.pld.PLDAccountant`` (pessimistic, discretisation 1e-3)."""
    pairs = list(_dp_events(mechanisms))
    if not pairs:
        return 0.0
    if any(ev.event.noise_multiplier == 0 for ev, _ in pairs):
        return math.inf
    acc = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for ev, steps in pairs:
        acc.compose(ev, steps)
    return float(acc.get_epsilon(delta))


def second_opinion(accountant: str | AccountantName):
    """For ``budget.calibrate_noise``: the auditor's implementation for a budget of this accountant
    (dp-accounting RDP for 'rdp', its PLD accountant for 'prv'), as (mechanisms, delta) -> epsilon."""
    return rdp_epsilon_of if parse_accountant_name(accountant) is AccountantName.RDP else pld_epsilon_of


def _mechanisms(events: Sequence[DpEvent]) -> list[SubsampledGaussian]:
    return [SubsampledGaussian(e.noise_multiplier, e.sample_rate, e.steps) for e in events]


def independent_rdp_epsilon(events: Sequence[DpEvent], delta: float,
                            orders: Sequence[float] = DEFAULT_RDP_ORDERS) -> float:
    """Epsilon of the events by ``dp_accounting.rdp.RdpAccountant`` (a second implementation)."""
    return rdp_epsilon_of(_mechanisms(events), delta, orders)


def independent_pld_epsilon(events: Sequence[DpEvent], delta: float) -> float:
    """Epsilon of the events by ``dp_accounting.pld.PLDAccountant`` (cross-check for PRV)."""
    return pld_epsilon_of(_mechanisms(events), delta)
