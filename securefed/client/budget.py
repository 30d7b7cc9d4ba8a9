"""The member's budget decisions: the DP event it plans, the noise it calibrates, the guard's verdict.

One ``BudgetGuard`` per member (its budget, its dataset size) checks every projection against the
ledger. Projections are memoised by their exact inputs (ledger head + mechanism), and after each
release the next round's projection is computed on a worker thread, so the per-round check before
training costs nothing on the round's critical path (the RDP work runs while the server aggregates).
"""

from __future__ import annotations

import hashlib
import json
import threading

from securefed.client.config import ClientConfig
from securefed.errors import BudgetExceeded, ProtocolAbort, SecureFedError
from securefed.logs import get_logger, log
from securefed.privacy.budget import BudgetGuard, BudgetProjection, calibrate_noise
from securefed.privacy.events import DpEvent, LibraryVersions, utc_timestamp
from securefed.privacy.ledger import Ledger
from securefed.training.dp import plan_steps

logger = get_logger("client.budget")


class BudgetPlanner:
    def __init__(self, config: ClientConfig, ledger: Ledger, dataset_size: int) -> None:
        self.config = config
        self.ledger = ledger
        self.dataset_size = dataset_size
        self.guard = BudgetGuard(config.privacy, dataset_size=dataset_size)
        self.config_hash = config_hash(config)
        self._sigma: float | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple, BudgetProjection] = {}
        self._workers: dict[tuple, threading.Thread] = {}

    # --- what a round would spend -------------------------------------------------------------
    def noise_multiplier(self, q: float, steps: int) -> float:
        """The configured sigma, or one calibrated once for every round this member plans to join.

        One sigma for the whole run, as the accountant assumes; after a restart it is recalibrated
        for the rounds that remain, on top of what the ledger says was spent."""
        sigma = self.config.training.noise_multiplier
        if sigma is not None:
            return sigma
        if self._sigma is None:
            prior = self.ledger.events()
            remaining = max(1, self.config.client.planned_rounds - len(prior))
            b = self.config.privacy
            self._sigma = calibrate_noise(b.target_epsilon, b.delta, q, steps * remaining, b.accountant,
                                          prior_events=prior)
            log(logger, "noise calibrated", noise_multiplier=round(self._sigma, 4), rounds=remaining,
                steps_per_round=steps, sample_rate=round(q, 6), target_epsilon=b.target_epsilon)
        return self._sigma

    def planned_event(self, attempt: int) -> DpEvent:
        t, b = self.config.training, self.config.privacy
        q, steps = plan_steps(t, self.dataset_size)
        return DpEvent(client_id=self.config.client.name, round_id=attempt, noise_multiplier=self.noise_multiplier(q, steps),
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
        pass the budget, so the member declines before training."""
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


def config_hash(config: ClientConfig) -> str:
    """SHA-256 of the training and privacy settings, recorded in each ledger event."""
    blob = json.dumps({"training": config.training.model_dump(mode="json"),
                       "privacy": config.privacy.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
