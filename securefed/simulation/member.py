"""One simulated member's round, on the member's real path, in whatever process an engine runs it.

A ``Workspace`` is what one worker process holds: ONE base model with its LoRA adapter (frozen base weights,
shared read-only by every member the process trains: a member's adapter is loaded into it before its turn),
the data split, and the strategy. ``Workspace.run(shared, task)`` is one member's round, as the member
daemon does it: the noise multiplier calibrated for its planned releases (``privacy.budget.calibrate_noise``
with the auditor's second accountant), the budget guard over its own DP events (it declines a round that
would pass its target), DP-SGD (``training.train_local``: Opacus, Poisson sampling, CSPRNG noise, or the
seeded sampler in reproducible mode), the strategy's payload, and the DP event of the release. Tasks and
outcomes are small frozen records, so an engine can ship them between processes.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from securefed.errors import BudgetExceeded, ConfigError, SecureFedError
from securefed.privacy.budget import BudgetGuard, PrivacyBudget, calibrate_noise
from securefed.privacy.accountants import mechanism_of
from securefed.privacy.events import AccountantName, DpEvent, event_from_training
from securefed.privacy.independent import second_opinion
from securefed.simulation.metrics import resolve_metric
from securefed.simulation.split import DataSource, build_split
from securefed.strategies import StrategySettings, make_strategy
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import LocalTrainingSettings, LoraSettings
from securefed.training.data import evaluate
from securefed.training.dp import plan_steps, train_local
from securefed.training.model import load_model
from securefed.training.rng import SeededSource

# A non-private baseline trains through the same path with no noise and, in effect, no clipping.
NO_CLIPPING = 1e6
FAULT_EXIT_CODE = 17


@dataclass(frozen=True)
class WorkspaceSpec:
    """Everything a worker needs to build its ``Workspace`` (small and picklable)."""

    model_dir: str
    lora: LoraSettings
    training: LocalTrainingSettings
    strategy: StrategySettings
    data: DataSource
    threads: int = 1
    eval_examples: int = 128
    metric: str | None = None


@dataclass(frozen=True)
class RoundShared:
    """What every member of a round receives: the global adapter and the strategy's server state."""

    round: int
    global_vec: np.ndarray
    server_state: Any = None


@dataclass(frozen=True)
class MemberTask:
    member: int  # 0-based index into the split
    round: int
    target_epsilon: float | None  # None: the non-private baseline
    delta: float
    accountant: AccountantName
    planned_releases: int
    prior: tuple[DpEvent, ...] = ()
    noise_key: bytes | None = None  # reproducible mode: the seed of this member's noise in this round
    client_state: Any = None
    fault: Literal["exit"] | None = None  # tests: the worker process dies in this task

    @property
    def name(self) -> str:
        return f"member-{self.member + 1}"


@dataclass(frozen=True)
class MemberOutcome:
    member: int
    status: Literal["trained", "declined", "lost"]
    payload: np.ndarray | None = field(default=None, repr=False)
    event: DpEvent | None = None
    client_state: Any = None
    noise_multiplier: float | None = None
    train_loss: float | None = None
    seconds: float = 0.0
    reason: str = ""
    worker: int = 0  # pid of the process that ran it


class Workspace:
    """One worker's base model, data split and strategy; members take turns on the one model."""

    models_loaded: ClassVar[int] = 0  # per process: tests check members share one base model

    def __init__(self, spec: WorkspaceSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.lm = load_model(spec.model_dir, spec.lora)
        Workspace.models_loaded += 1
        self.split = build_split(spec.data, self.lm.tokenizer, self.lm.kind)
        self.initial, self.layout = adapter_to_vector(self.lm.model)
        self.strategy = make_strategy(spec.strategy, dim=self.layout.total_size)
        self.metric = resolve_metric(spec.metric)
        self._sigmas: dict[tuple, float] = {}
        self._verdicts: dict[tuple, str | None] = {}

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.split.sizes

    def noise_multiplier(self, task: MemberTask, q: float, steps: int) -> float:
        """Sigma calibrated for the member's planned releases, as the member daemon calibrates it."""
        if task.target_epsilon is None:
            return 0.0
        key = (task.target_epsilon, task.delta, task.accountant, q, steps, task.planned_releases)
        if key not in self._sigmas:
            self._sigmas[key] = calibrate_noise(task.target_epsilon, task.delta, q, steps * task.planned_releases,
                                                task.accountant, second_opinion=second_opinion(task.accountant))
        return self._sigmas[key]

    def check_budget(self, task: MemberTask, planned: DpEvent, dataset_size: int) -> None:
        """The member's budget guard on its own events (``BudgetExceeded``: it declines). Members with the
        same history and plan get the same verdict, so it is computed once per distinct case."""
        key = (tuple(mechanism_of(e) for e in task.prior), mechanism_of(planned), task.target_epsilon, task.delta,
               task.accountant, dataset_size)
        if key not in self._verdicts:
            budget = PrivacyBudget(target_epsilon=task.target_epsilon, delta=task.delta, accountant=task.accountant)
            try:
                BudgetGuard(budget, dataset_size=dataset_size).check(task.prior, planned)
                self._verdicts[key] = None
            except BudgetExceeded as exc:
                self._verdicts[key] = str(exc)
        if self._verdicts[key] is not None:
            raise BudgetExceeded(self._verdicts[key])

    def run(self, shared: RoundShared, task: MemberTask) -> MemberOutcome:
        t0 = time.perf_counter()
        if task.fault == "exit":
            os._exit(FAULT_EXIT_CODE)  # a worker dying mid-round (tests): the engine must report a dropout
        data = self.split.members[task.member]
        private = task.target_epsilon is not None
        settings = self.spec.training.model_copy(update={
            "secure_mode": task.noise_key is None, **({} if private else {"clip_norm": NO_CLIPPING})})
        q, steps = plan_steps(settings, len(data))
        try:
            sigma = self.noise_multiplier(task, q, steps)
            if private:
                self.check_budget(task, _event(task, settings, sigma, q, steps), len(data))
        except (BudgetExceeded, ConfigError) as exc:
            return MemberOutcome(task.member, "declined", reason=str(exc), seconds=time.perf_counter() - t0,
                                 worker=os.getpid())
        load_adapter_vector(self.lm.model, np.asarray(shared.global_vec, dtype=np.float32), self.layout)
        hooks = self.strategy.client_hooks(task.client_state, shared.server_state)
        source = SeededSource(task.noise_key) if task.noise_key is not None else None
        try:
            result = train_local(self.lm.model, data, settings, sigma, strategy_state=hooks, source=source)
        except SecureFedError as exc:  # a member whose training fails drops out; the federation goes on
            return MemberOutcome(task.member, "lost", reason=str(exc), seconds=time.perf_counter() - t0,
                                 worker=os.getpid())
        payload = self.strategy.client_payload(result, client_state=task.client_state, server_state=shared.server_state)
        event = _event(task, settings, sigma, q, steps, result) if private else None
        return MemberOutcome(task.member, "trained", payload.vector, event, payload.client_state, sigma,
                             result.train_loss, time.perf_counter() - t0, worker=os.getpid())

    def evaluate(self, global_vec: np.ndarray) -> tuple[float, float, dict[str, float]]:
        """Held-out loss, perplexity and the task metric of ``global_vec``."""
        load_adapter_vector(self.lm.model, np.asarray(global_vec, dtype=np.float32), self.layout)
        loss, ppl = evaluate(self.lm.model, self.split.heldout, max_examples=self.spec.eval_examples)
        extra = self.metric(self.lm.model, self.lm.tokenizer, self.split.heldout, self.spec.eval_examples) \
            if self.metric else {}
        return loss, ppl, extra


def _event(task: MemberTask, settings: LocalTrainingSettings, sigma: float, q: float, steps: int,
           result: Any = None) -> DpEvent:
    facts = result or _Planned(sigma, q, steps, settings.clip_norm, settings.secure_mode)
    return event_from_training(facts, client_id=task.name, round_id=task.round, delta=task.delta,
                               accountant=task.accountant, config_hash=_config_hash(settings))


@dataclass(frozen=True)
class _Planned:
    """The facts of a round before it runs, in ``LocalTrainResult``'s names (for the budget guard)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    secure_rng: bool


def _config_hash(settings: LocalTrainingSettings) -> str:
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()
