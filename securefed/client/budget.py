"""The member's budget decisions: the DP event it plans, the noise it calibrates, the guard's verdict.

One ``BudgetGuard`` per member (its budget, its dataset size) checks every projection against the
ledger. Projections are memoised by their exact inputs (ledger head + mechanism), and after each
release the next round's projection is computed on a worker thread, so the per-round check before
training costs nothing on the round's critical path (the RDP work runs while the server aggregates).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence

from securefed.client.config import ClientConfig
from securefed.errors import BudgetExceeded, ConfigError, PlannedRoundsDone, ProtocolAbort, SecureFedError
from securefed.logs import get_logger, log
from securefed.privacy.accountants import accountant_class
from securefed.privacy.budget import BudgetGuard, BudgetProjection, calibrate_noise
from securefed.privacy.events import DpEvent, LibraryVersions, utc_timestamp
from securefed.privacy.formulas import SubsampledGaussian
from securefed.privacy.independent import second_opinion
from securefed.privacy.ledger import Ledger
from securefed.training.dp import plan_steps

logger = get_logger("client.budget")


class BudgetPlanner:
    def __init__(self, config: ClientConfig, ledger: Ledger, dataset_size: int) -> None:
        self.config = config
        self.ledger = ledger
        self.dataset_size = dataset_size
        self.guard = BudgetGuard(config.privacy, dataset_size=dataset_size)  # ConfigError: delta >= 1/N
        self.config_hash = config_hash(config)
        self._sigma: float | None = None
        self._sigma_after = -1  # releases in the ledger when _sigma was calibrated
        self._lock = threading.Lock()
        self._cache: dict[tuple, BudgetProjection] = {}
        self._workers: dict[tuple, threading.Thread] = {}

    # --- can this member ever train, and will it now ----------------------------------------------
    def check_feasible(self) -> None:
        """``check_feasible`` for this member (exit 2 at start-up when it fails); on an empty ledger the
        calibration it runs is the run's own, logged once. Data too small for DP to mean much is a
        warning."""
        small = small_data_warning(self.dataset_size, plan_steps(self.config.training, self.dataset_size)[0])
        if small is not None:
            log(logger, small, level=logging.WARNING)
        if self.ledger.events():
            # A restarted member: its first start checked this; noise_multiplier tells a config that
            # cannot work from a budget mostly spent when calibration fails.
            return
        sigma = check_feasible(self.config, self.dataset_size)
        if sigma is not None:
            q, steps = plan_steps(self.config.training, self.dataset_size)
            self._sigma, self._sigma_after = sigma, 0
            log(logger, "noise calibrated", noise_multiplier=round(sigma, 4), rounds=self.config.client.planned_rounds,
                steps_per_round=steps, sample_rate=round(q, 6), target_epsilon=self.config.privacy.target_epsilon)

    def check_planned_rounds(self) -> None:
        """``PlannedRoundsDone`` once this member released its planned rounds with calibrated noise
        (unless ``client.after_planned_rounds = 'continue'``)."""
        c = self.config.client
        if self.config.training.noise_multiplier is not None or c.after_planned_rounds != "stop":
            return
        released = len(self.ledger.events())
        if released >= c.planned_rounds:
            b = self.config.privacy
            raise PlannedRoundsDone(
                f"this member released updates in {released} rounds of its client.planned_rounds = "
                f"{c.planned_rounds} (epsilon {self.ledger.epsilon():.4g} of target {b.target_epsilon:g} spent): "
                "it stops joining; to train more, raise planned_rounds and restart (the noise is then "
                "recalibrated for the added rounds on what is left)"
            )

    # --- what a round would spend -------------------------------------------------------------
    def noise_multiplier(self, q: float, steps: int) -> float:
        """The configured sigma, or one calibrated once for every round this member plans to join.

        One sigma for the whole run, as the accountant assumes; after a restart it is recalibrated
        for the rounds that remain, on top of what the ledger says was spent. Past planned_rounds
        (``after_planned_rounds = 'continue'`` only) it is recalibrated before each extra round, to
        spend part of what is left, and says so."""
        sigma = self.config.training.noise_multiplier
        if sigma is not None:
            return sigma
        c, b = self.config.client, self.config.privacy
        prior = self.ledger.events()
        extra = len(prior) >= c.planned_rounds
        if self._sigma is None or (extra and self._sigma_after != len(prior)):
            remaining = 1 if extra else c.planned_rounds - len(prior)
            try:
                self._sigma = calibrate(self.config, q, steps, remaining, prior)
            except ConfigError as exc:
                if not prior:
                    raise
                # A config that works on an empty ledger: what is left is too little. One that does not
                # (changed since the ledger began) is the config's fault: ConfigError.
                calibrate(self.config, q, steps, c.planned_rounds)
                raise BudgetExceeded(f"what is left of the budget fits no round of {steps} steps: {exc}") from None
            self._sigma_after = len(prior)
            fields = dict(noise_multiplier=round(self._sigma, 4), rounds=remaining, steps_per_round=steps,
                          sample_rate=round(q, 6), target_epsilon=b.target_epsilon)
            if extra:
                log(logger, "planned rounds done; client.after_planned_rounds = 'continue': one more round "
                    "on what is left of the budget, with more noise", level=logging.WARNING,
                    epsilon_spent=round(self.ledger.epsilon(), 4), **fields)
            else:
                log(logger, "noise calibrated", **fields)
        return self._sigma

    def planned_event(self, attempt: int) -> DpEvent:
        q, steps = plan_steps(self.config.training, self.dataset_size)
        return self._event(attempt, self.noise_multiplier(q, steps), q, steps)

    def _event(self, attempt: int, sigma: float, q: float, steps: int) -> DpEvent:
        t, b = self.config.training, self.config.privacy
        return DpEvent(client_id=self.config.client.name, round_id=attempt, noise_multiplier=sigma,
                       sample_rate=q, steps=steps, delta=b.delta, clip_norm=t.clip_norm, accountant=b.accountant,
                       secure_rng=t.secure_mode, library_versions=LibraryVersions.current(),
                       config_hash=self.config_hash, timestamp=utc_timestamp())

    # --- the guard ----------------------------------------------------------------------------
    def project(self, planned: DpEvent) -> BudgetProjection:
        """The guard's projection for ``planned`` on top of the ledger (memoised; joins a worker
        already computing it)."""
        key = self._key(planned)
        with self._lock:
            worker = self._workers.get(key)
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            hit = self.guard.project(self.ledger.events(), planned)
            with self._lock:
                self._cache = {key: hit}
        return hit

    def approve(self, attempt: int) -> tuple[DpEvent, BudgetProjection]:
        """The event this round may spend; ``BudgetExceeded`` (with the guard's reason) when it would
        pass the budget, ``PlannedRoundsDone`` after the planned rounds, so the member declines
        before training."""
        self.check_planned_rounds()
        planned = self.planned_event(attempt)
        p = self.project(planned)
        if not p.within_budget:
            self.guard.check(self.ledger.events(), planned)  # raises BudgetExceeded with the full reason
        return planned, p

    def confirm_ran(self, approved: DpEvent, ran: DpEvent) -> None:
        """What training ran must be what the guard approved, or itself within the budget, before
        anything is released."""
        if (ran.noise_multiplier, ran.sample_rate, ran.steps) == (approved.noise_multiplier, approved.sample_rate,
                                                                   approved.steps):
            return
        try:
            self.guard.check(self.ledger.events(), ran)
        except BudgetExceeded as exc:
            raise ProtocolAbort(f"training ran other DP parameters than approved and they exceed the budget: {exc}") from None

    def precompute_next(self) -> None:
        """After a release: project the next round (same sigma, q and steps) on a worker thread.
        Everything, building the planned event included, runs there: nothing of it sits between the
        ledger append and the upload."""
        threading.Thread(target=self._precompute, name=f"budget-{self.config.client.name}", daemon=True).start()

    def _precompute(self) -> None:
        try:
            self.check_planned_rounds()
            planned = self.planned_event(0)
        except SecureFedError:
            return
        key = self._key(planned)
        me = threading.current_thread()
        with self._lock:
            if key in self._cache or key in self._workers:
                return
            self._workers[key] = me
        try:
            self.project(planned)
        except SecureFedError:
            pass  # the round's own check repeats the projection and reports the reason
        finally:
            with self._lock:
                self._workers.pop(key, None)

    def _key(self, planned: DpEvent) -> tuple:
        head = self.ledger.head()
        return (head.length, head.entry_hash, planned.noise_multiplier, planned.sample_rate, planned.steps,
                planned.delta, planned.accountant)


def calibrate(config: ClientConfig, q: float, steps: int, rounds: int, prior: Sequence[DpEvent] = ()) -> float:
    """The noise multiplier for ``rounds`` more rounds of ``steps`` steps on top of ``prior``: within the
    target and the per-round cap by this member's accountant and by the auditor's (dp-accounting)."""
    b = config.privacy
    return calibrate_noise(b.target_epsilon, b.delta, q, steps * rounds, b.accountant, prior_events=prior,
                           per_round_epsilon=b.per_round_epsilon, steps_per_round=steps,
                           second_opinion=second_opinion(b.accountant))


def check_feasible(config: ClientConfig, dataset_size: int) -> float | None:
    """``ConfigError`` for a configuration that could not train even on an empty ledger: delta not below
    1/N, a target or per-round cap no noise level reaches with these steps and planned rounds, or a
    fixed noise multiplier whose first round alone passes the target or the cap. Returns the noise
    multiplier calibrated for the whole run on an empty ledger (None with a fixed one)."""
    t, b = config.training, config.privacy
    BudgetGuard(b, dataset_size=dataset_size)  # delta < 1/N
    q, steps = plan_steps(t, dataset_size)
    if t.noise_multiplier is None:
        try:
            return calibrate(config, q, steps, config.client.planned_rounds)
        except ConfigError as exc:
            raise ConfigError(f"privacy: this member can never train: {exc} (or lower client.planned_rounds)") from None
    alone = accountant_class(b.accountant).epsilon_of_mechanisms([SubsampledGaussian(t.noise_multiplier, q, steps)], b.delta)
    for limit, key in ((b.target_epsilon, "target_epsilon"), (b.per_round_epsilon, "per_round_epsilon")):
        if limit is not None and alone > limit:
            raise ConfigError(
                f"privacy: this member can never train: one round at training.noise_multiplier = {t.noise_multiplier:g} "
                f"({steps} steps, sample rate {q:.4g}) costs epsilon {alone:.4g} > privacy.{key} = {limit:g}; raise the "
                "noise multiplier (or remove it to calibrate), train fewer steps, or raise the budget"
            )
    return None


# Below these, DP-SGD protects little: Poisson sampling amplifies privacy only at small sample rates,
# and the noise a budget needs on a handful of records drowns what they could teach the model.
SMALL_DATASET = 100
LARGE_SAMPLE_RATE = 0.1


def small_data_warning(dataset_size: int, sample_rate: float) -> str | None:
    """A line to show when the data is too small for DP-SGD to mean much (None otherwise)."""
    if dataset_size >= SMALL_DATASET and sample_rate <= LARGE_SAMPLE_RATE:
        return None
    return (f"only {dataset_size} training examples (sample rate {sample_rate:.3g} per step): differential privacy "
            f"over so few records protects little (sampling amplifies privacy only at sample rates well below "
            f"{LARGE_SAMPLE_RATE:g}, and the noise the budget needs drowns what they could teach); a member needs "
            f"hundreds of examples or more (at least {SMALL_DATASET}, with batch_size at most "
            f"{LARGE_SAMPLE_RATE:g} x N)")


def config_hash(config: ClientConfig) -> str:
    """SHA-256 of the training and privacy settings, recorded in each ledger event."""
    blob = json.dumps({"training": config.training.model_dump(mode="json"),
                       "privacy": config.privacy.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
