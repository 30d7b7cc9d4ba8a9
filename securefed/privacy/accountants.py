"""Thin, stateful accountants over ``DpEvent`` logs, and a registry name -> class.

An accountant holds the events it was given (frozen records) and computes epsilon from them on
request with the pure functions of ``securefed.privacy.formulas``. It refuses anything it cannot
account for (an object that is not a ``DpEvent``, a non-Poisson sampler) with ``AccountingError``,
so nothing is ever silently under-counted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from securefed.errors import AccountingError
from securefed.privacy import formulas
from securefed.privacy.events import AccountantName, DpEvent, Sampler, parse_accountant_name
from securefed.privacy.formulas import SubsampledGaussian


def mechanism_of(event: object) -> SubsampledGaussian:
    """The mechanism an event stands for; anything the accountants do not understand is refused."""
    if type(event) is not DpEvent:  # exact type: a subclass could change the semantics
        raise AccountingError(f"cannot account for {type(event).__name__}: only DpEvent records are supported")
    if event.sampler is not Sampler.POISSON:
        raise AccountingError(
            f"sampler {event.sampler.value!r} cannot be accounted: only Poisson subsampling is supported"
        )
    return SubsampledGaussian(event.noise_multiplier, event.sample_rate, event.steps)


class Accountant(ABC):
    """Composes ``DpEvent``s; epsilon is derived on request, never stored."""

    name: ClassVar[AccountantName]

    def __init__(self, events: Iterable[DpEvent] = ()) -> None:
        self._events: list[DpEvent] = []
        self._mechanisms: list[SubsampledGaussian] = []
        for e in events:
            self.compose(e)

    def compose(self, event: DpEvent) -> None:
        """Add one event (validated first: a refused event leaves the accountant unchanged)."""
        mech = mechanism_of(event)
        self._events.append(event)
        self._mechanisms.append(mech)

    @property
    def events(self) -> tuple[DpEvent, ...]:
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def epsilon(self, delta: float) -> float:
        """Epsilon of everything composed so far at this delta (0.0 when empty, inf without noise)."""
        return self.epsilon_of_mechanisms(self._mechanisms, delta)

    def epsilon_with(self, extra: Iterable[SubsampledGaussian], delta: float) -> float:
        """Epsilon if ``extra`` mechanisms were also run (a projection; composes nothing)."""
        return self.epsilon_of_mechanisms([*self._mechanisms, *extra], delta)

    @classmethod
    def epsilon_of(cls, events: Iterable[DpEvent], delta: float) -> float:
        return cls.epsilon_of_mechanisms([mechanism_of(e) for e in events], delta)

    @staticmethod
    @abstractmethod
    def epsilon_of_mechanisms(mechanisms: Sequence[SubsampledGaussian], delta: float) -> float: ...


class RdpAccountant(Accountant):
    """Renyi-DP accounting (Opacus' orders and conversion): sums RDP curves across events."""

    name = AccountantName.RDP

    @staticmethod
    def epsilon_of_mechanisms(mechanisms: Sequence[SubsampledGaussian], delta: float) -> float:
        return formulas.rdp_epsilon(mechanisms, delta)


class PrvAccountant(Accountant):
    """PRV numerical composition (Gopi et al. 2021, Opacus' implementation); tighter than RDP."""

    name = AccountantName.PRV

    @staticmethod
    def epsilon_of_mechanisms(mechanisms: Sequence[SubsampledGaussian], delta: float) -> float:
        return formulas.prv_epsilon(mechanisms, delta)


#: The registry. Add an accountant by adding a class here (and a member to ``AccountantName``).
ACCOUNTANTS: Mapping[AccountantName, type[Accountant]] = MappingProxyType(
    {AccountantName.RDP: RdpAccountant, AccountantName.PRV: PrvAccountant}
)


def accountant_class(name: str | AccountantName) -> type[Accountant]:
    """``"rdp"`` -> ``RdpAccountant``; an unknown name raises ``AccountingError``."""
    return ACCOUNTANTS[parse_accountant_name(name)]


def create_accountant(name: str | AccountantName, events: Iterable[DpEvent] = ()) -> Accountant:
    return accountant_class(name)(events)


def compute_epsilon(events: Iterable[DpEvent], delta: float, accountant: str | AccountantName) -> float:
    """Epsilon of a whole event log with the named accountant."""
    return accountant_class(accountant).epsilon_of(events, delta)


def cumulative_epsilons(
    events: Sequence[DpEvent], delta: float, accountant: str | AccountantName
) -> list[float]:
    """Epsilon after each event (prefix compositions), for per-round reports.

    RDP curves add, so the RDP path is incremental; PRV recomputes each prefix.
    """
    name = parse_accountant_name(accountant)
    mechs = [mechanism_of(e) for e in events]
    if name is AccountantName.RDP:
        out, curve = [], np.zeros(len(formulas.DEFAULT_RDP_ORDERS))
        for m in mechs:
            curve = curve + formulas.rdp_curve([m])
            out.append(formulas.rdp_to_epsilon(curve, delta))
        return out
    cls = ACCOUNTANTS[name]
    out: list[float] = []
    for i in range(1, len(mechs) + 1):
        # once infinite, always infinite: skip the numerics
        out.append(math.inf if out and math.isinf(out[-1]) else cls.epsilon_of_mechanisms(mechs[:i], delta))
    return out
