"""A client's privacy budget, the guard that enforces it before training, and noise calibration.

The client enforces its own budget: before each round the ``BudgetGuard`` projects epsilon after the
round (every event already in the ledger plus the planned one) and raises ``BudgetExceeded`` if the
projection passes the target (or the per-round cap). The client then declines and trains nothing.

``calibrate_noise`` picks the smallest noise multiplier for which the *whole planned run* (all the
rounds the client may still join, on top of what it already spent) stays within the target. Its
binary search only ever returns a sigma whose epsilon it has computed and found within the target,
so it cannot overshoot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pydantic import Field, model_validator

from securefed.config import StrictModel
from securefed.errors import AccountingError, BudgetExceeded, ConfigError
from securefed.privacy.accountants import accountant_class, mechanism_of
from securefed.privacy.events import AccountantName, DpEvent, parse_accountant_name
from securefed.privacy.formulas import SubsampledGaussian

#: (mechanisms, delta) -> epsilon: a second accountant for calibration to satisfy too.
EpsilonFn = Callable[[list[SubsampledGaussian], float], float]

#: Largest noise multiplier calibration will consider. Beyond it the RDP bound no longer moves (its
#: floor is set by the largest order and delta), so a target that needs more is unreachable.
MAX_NOISE_MULTIPLIER = 1e4


class PrivacyBudget(StrictModel):
    """``[privacy]`` in client.toml: the (epsilon, delta) this client will never exceed."""

    target_epsilon: float = Field(
        gt=0, allow_inf_nan=False, description="Total epsilon the client may spend over the whole federation."
    )
    delta: float = Field(
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Delta of the (epsilon, delta) guarantee; must be below 1 / (number of training examples).",
    )
    per_round_epsilon: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Optional cap on the epsilon of a single round taken alone; a round above it is declined.",
    )
    accountant: AccountantName = Field(
        AccountantName.RDP, description="Accountant that enforces the budget: 'rdp' (default) or 'prv' (tighter)."
    )

    @model_validator(mode="after")
    def _cap_within_total(self) -> PrivacyBudget:
        if self.per_round_epsilon is not None and self.per_round_epsilon > self.target_epsilon:
            raise ValueError(
                f"per_round_epsilon ({self.per_round_epsilon}) exceeds target_epsilon ({self.target_epsilon}); "
                "lower per_round_epsilon or remove it"
            )
        return self

    def check_dataset_size(self, dataset_size: int) -> None:
        """delta must be well below 1/n, else 'leak one record outright with probability delta' is allowed."""
        check_delta_for_dataset(self.delta, dataset_size)

    def to_dict(self) -> dict:
        return {
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "per_round_epsilon": self.per_round_epsilon,
            "accountant": self.accountant.value,
        }


def check_delta_for_dataset(delta: float, dataset_size: int) -> None:
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ConfigError(f"dataset size must be a positive integer, got {dataset_size!r}")
    if delta >= 1.0 / dataset_size:
        raise ConfigError(
            f"privacy.delta = {delta:g} is not below 1/dataset_size = 1/{dataset_size} = {1.0 / dataset_size:.3g}; "
            f"set privacy.delta to at most {suggest_delta(dataset_size):.1g}"
        )


def suggest_delta(dataset_size: int) -> float:
    """A conventional choice: 1 / (10 n), rounded down to one significant digit."""
    raw = 1.0 / (10 * dataset_size)
    exp = math.floor(math.log10(raw))
    return math.floor(raw / 10**exp) * 10**exp


@dataclass(frozen=True, slots=True)
class Schedule:
    """Poisson sampling schedule of one round: q = batch_size / n, steps = ceil(epochs / q)."""

    sample_rate: float
    steps_per_round: int


def plan_schedule(dataset_size: int, batch_size: int, epochs_per_round: float) -> Schedule:
    """The same rule as ``securefed.training`` uses (q = B / n capped at 1, steps = ceil(E / q))."""
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ConfigError(f"dataset size must be a positive integer, got {dataset_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if not (math.isfinite(epochs_per_round) and epochs_per_round > 0):
        raise ConfigError(f"epochs per round must be > 0, got {epochs_per_round!r}")
    q = min(1.0, batch_size / dataset_size)
    # round() guards against 0.3/0.1 = 2.9999999999999996 style error before ceil
    return Schedule(sample_rate=q, steps_per_round=max(1, math.ceil(round(epochs_per_round / q, 9))))


def _mechanisms(events: Iterable[DpEvent]) -> list[SubsampledGaussian]:
    return [mechanism_of(e) for e in events]


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str | AccountantName,
    *,
    prior_events: Sequence[DpEvent] = (),
    rel_tol: float = 1e-3,
    per_round_epsilon: float | None = None,
    steps_per_round: int | None = None,
    second_opinion: EpsilonFn | None = None,
) -> float:
    """Smallest noise multiplier (to ``rel_tol``) such that prior events + ``steps`` steps at
    (sigma, ``sample_rate``) cost at most ``target_epsilon`` at ``delta`` and, with
    ``per_round_epsilon``, one round of ``steps_per_round`` steps alone costs at most that cap.

    ``steps`` is the whole planned future: steps per round x rounds the client may still join (the
    same (sigma, q) every round composes exactly like one long run).

    Both conditions hold by the budget's own accountant AND, with ``second_opinion`` (the member
    daemon passes ``privacy.independent.second_opinion(accountant)``: the ``dp-accounting``
    implementation the auditor's ``verify`` uses), by that one too: where the two differ, the larger
    sigma is returned, so an audit never shows a calibrated run above its target (a margin of exactly
    what the second accountant needs, not a guess). It is a parameter so that this module stays free
    of dp-accounting.

    The result is always a sigma whose epsilon was computed and found <= target (safe side).
    Raises ``BudgetExceeded`` if prior events already use the budget up, ``ConfigError`` if the target
    (or the cap) is unreachable for any sigma up to ``MAX_NOISE_MULTIPLIER`` or the inputs cannot be
    calibrated.
    """
    cls = accountant_class(accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be > 0 and finite, got {target_epsilon!r}")
    if not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"sample rate must be in (0, 1] to calibrate noise, got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer to calibrate noise, got {steps!r}")
    if not (0 < rel_tol < 1):
        raise ConfigError(f"rel_tol must be in (0, 1), got {rel_tol!r}")
    if per_round_epsilon is not None:
        if not (math.isfinite(per_round_epsilon) and per_round_epsilon > 0):
            raise ConfigError(f"per_round_epsilon must be > 0 and finite, got {per_round_epsilon!r}")
        if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) or not 1 <= steps_per_round <= steps:
            raise ConfigError(f"steps_per_round must be an integer in [1, steps] with a per-round cap, got {steps_per_round!r}")
    prior = _mechanisms(prior_events)
    spent = cls.epsilon_of_mechanisms(prior, delta) if prior else 0.0
    if spent >= target_epsilon:
        raise BudgetExceeded(
            f"the budget is already spent: prior rounds used epsilon {spent:.4g} of target {target_epsilon:g}; "
            "no noise level can fit another round (raise target_epsilon only if the data owner's policy allows it, "
            "or stop training on this data)"
        )
    second = second_opinion

    def within(mechs: list[SubsampledGaussian], limit: float, *, both: bool) -> bool:
        try:
            if cls.epsilon_of_mechanisms(mechs, delta) > limit:
                return False
            return not both or second is None or second(mechs, delta) <= limit
        except (AccountingError, ValueError, FloatingPointError):
            return False  # numerically unusable sigma: treat as too little noise (the safe side)

    def fits(sigma: float, *, both: bool = True) -> bool:
        if not within([*prior, SubsampledGaussian(sigma, sample_rate, steps)], target_epsilon, both=both):
            return False
        return per_round_epsilon is None or within(
            [SubsampledGaussian(sigma, sample_rate, steps_per_round)], per_round_epsilon, both=both)

    # The search runs on the budget's own accountant; the independent one (slower) is then checked
    # at the result and, where it needs more noise, the search resumes from there with both.
    sigma = _smallest(lambda s: fits(s, both=False), rel_tol, lo=0.0)
    if sigma is not None and not fits(sigma):
        sigma = _smallest(fits, rel_tol, lo=sigma)
    # Re-calibrating mid-run: a noise multiplier already in the ledger (same q) that still fits and is
    # within the search's tolerance of the result is kept, so the rounds share one (sigma, q) and
    # compose as one mechanism (cheap for PRV, tidy ledgers).
    if sigma is not None:
        for prior_sigma in sorted({m.noise_multiplier for m in prior if m.sample_rate == sample_rate}):
            if sigma <= prior_sigma <= sigma * (1 + rel_tol) ** 2 and fits(prior_sigma):
                return prior_sigma
    if sigma is None:
        floor = cls.epsilon_of_mechanisms([*prior, SubsampledGaussian(MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta)
        what = f"target epsilon {target_epsilon:g}"
        if floor <= target_epsilon and per_round_epsilon is not None:
            what = f"per_round_epsilon {per_round_epsilon:g} (rounds of {steps_per_round} steps)"
        raise ConfigError(
            f"{what} is unreachable at delta {delta:g} with the {cls.name.value} accountant over {steps} "
            f"planned steps (even noise multiplier {MAX_NOISE_MULTIPLIER:g} does not fit); "
            "raise target_epsilon or delta, or use fewer steps or a smaller sample rate"
        )
    return sigma


def _smallest(fits, rel_tol: float, *, lo: float) -> float | None:
    """Smallest sigma > ``lo`` (to ``rel_tol``) with ``fits(sigma)``, for a ``fits`` monotone in sigma
    and false at ``lo`` (or ``lo`` = 0); None when nothing up to ``MAX_NOISE_MULTIPLIER`` fits. Only
    a sigma that was evaluated and fits is ever returned."""
    hi = max(1.0, lo * (1 + rel_tol))
    while not fits(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_NOISE_MULTIPLIER:
            return None
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True, slots=True)
class BudgetProjection:
    """What the guard computed before a round (all epsilons at the budget's delta)."""

    accountant: AccountantName
    delta: float
    target_epsilon: float
    epsilon_before: float
    epsilon_after: float
    round_epsilon: float
    per_round_cap: float | None

    @property
    def remaining_after(self) -> float:
        return self.target_epsilon - self.epsilon_after

    @property
    def within_budget(self) -> bool:
        cap_ok = self.per_round_cap is None or self.round_epsilon <= self.per_round_cap
        return self.epsilon_after <= self.target_epsilon and cap_ok


class BudgetGuard:
    """Refuses a round whose projected epsilon would pass the budget. Holds no state of its own:
    prior spending always comes from the ledger's events."""

    def __init__(self, budget: PrivacyBudget, *, dataset_size: int | None = None) -> None:
        if not isinstance(budget, PrivacyBudget):
            raise ConfigError("BudgetGuard needs a PrivacyBudget")
        if dataset_size is not None:
            budget.check_dataset_size(dataset_size)
        self.budget = budget
        self._cls = accountant_class(budget.accountant)

    def project(self, prior_events: Sequence[DpEvent], planned: DpEvent) -> BudgetProjection:
        """Epsilon before and after the planned round, and of the round alone."""
        b = self.budget
        if parse_accountant_name(planned.accountant) is not b.accountant:
            raise ConfigError(
                f"planned event uses the {planned.accountant.value} accountant but the budget uses "
                f"{b.accountant.value}; build events with the budget's accountant"
            )
        if planned.delta != b.delta:
            raise ConfigError(
                f"planned event has delta {planned.delta:g} but the budget's delta is {b.delta:g}; "
                "build events with the budget's delta"
            )
        prior = _mechanisms(prior_events)
        this = mechanism_of(planned)
        before = self._cls.epsilon_of_mechanisms(prior, b.delta) if prior else 0.0
        after = self._cls.epsilon_of_mechanisms([*prior, this], b.delta)
        alone = self._cls.epsilon_of_mechanisms([this], b.delta)
        return BudgetProjection(
            accountant=b.accountant,
            delta=b.delta,
            target_epsilon=b.target_epsilon,
            epsilon_before=before,
            epsilon_after=after,
            round_epsilon=alone,
            per_round_cap=b.per_round_epsilon,
        )

    def check(self, prior_events: Sequence[DpEvent], planned: DpEvent) -> BudgetProjection:
        """Return the projection, or raise ``BudgetExceeded`` (the client must decline the round).

        A round whose epsilon cannot be computed (an event the accountant refuses, a numerical failure)
        is declined too: what cannot be accounted must not be released. The message says what would
        help in this case: nothing but a larger target once the budget is spent; more noise or fewer
        steps while some budget is left."""
        try:
            p = self.project(prior_events, planned)
        except AccountingError as exc:
            raise BudgetExceeded(f"its privacy cost cannot be accounted ({exc})") from None
        where = f"delta {p.delta:g}, {p.accountant.value}"
        if p.epsilon_before >= p.target_epsilon:
            raise BudgetExceeded(
                f"the privacy budget is spent: epsilon {p.epsilon_before:.4g} of target {p.target_epsilon:g} "
                f"({where}); no noise level or step count fits another round: this member cannot train on this "
                "data again (only a larger target_epsilon would, if the data owner's policy allows it)"
            )
        if p.epsilon_after > p.target_epsilon:
            raise BudgetExceeded(
                f"epsilon would reach {p.epsilon_after:.4g} > target {p.target_epsilon:g} (spent "
                f"{p.epsilon_before:.4g}, {where}); a round may cost at most the {p.target_epsilon - p.epsilon_before:.3g} "
                "left: raise the noise multiplier or train fewer steps per round"
            )
        if p.per_round_cap is not None and p.round_epsilon > p.per_round_cap:
            raise BudgetExceeded(
                f"this round alone costs epsilon {p.round_epsilon:.4g} > per_round_epsilon {p.per_round_cap:g} "
                f"({where}); raise the noise multiplier or train fewer steps per round"
            )
        return p
