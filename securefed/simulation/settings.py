"""What one ``securefed simulate`` run does: a validated, frozen pydantic model (the CLI builds it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from securefed.config import StrictModel
from securefed.privacy.events import AccountantName
from securefed.secagg.params import DEFAULT_MAX_COLLUDERS
from securefed.strategies.config import StrategySettings
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings

# Secure aggregation of two reveals each update to the other; CKKS' decryption threshold is a strict majority.
MIN_SECURE_COHORT = 3


def default_training() -> LocalTrainingSettings:
    return LocalTrainingSettings(learning_rate=0.1, batch_size=8, steps=4, max_seq_len=32, clip_norm=1.0,
                                 clipping=ClippingMode.HOOKS)


class SimulationSettings(StrictModel):
    members: int = Field(ge=1, le=100_000, description="Simulated members (each holds one shard of the data).")
    rounds: int = Field(ge=1, le=10_000, description="Federated rounds per epsilon.")
    epsilons: tuple[float | None, ...] = Field(
        description="Target epsilon of every member, one simulation each; None is the non-private baseline.")
    delta: float = Field(1e-5, gt=0, lt=1, description="Delta of every member's (epsilon, delta) budget.")
    accountant: AccountantName = Field(AccountantName.RDP, description="The members' accountant: rdp or prv.")
    cohort_fraction: float = Field(1.0, gt=0, le=1, description="Share of the members sampled into each round.")
    dropout_rate: float = Field(0.0, ge=0, lt=1, description="Probability that a sampled member drops out.")
    member_rounds: int | None = Field(
        None, ge=1, description="Releases each member calibrates its noise for (default: the rounds it expects to be "
        "sampled into, ceil(cohort fraction x rounds)); a member sampled more often declines once its budget is spent.")
    seed: int = Field(0, ge=0, description="Seed of the simulation's own choices: data split, cohorts, dropouts.")
    reproducible: bool = Field(
        False, description="Also derive DP noise, Poisson batches and the fixed-point rounding from the seed: runs "
        "repeat exactly, and their noise is known to whoever knows the seed (not a privacy guarantee).")
    mode: Literal["secagg", "ckks", "plaintext"] = Field("secagg", description="How updates are summed.")
    max_colluders: int = Field(DEFAULT_MAX_COLLUDERS, ge=0, description="Members assumed to collude with the server.")
    training: LocalTrainingSettings = Field(default_factory=default_training)
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(rank=4, alpha=8.0))
    strategy: StrategySettings = Field(default_factory=lambda: StrategySettings(max_samples=1000))
    model_dir: Path = Field(description="The base checkpoint every member fine-tunes (read-only).")
    data_paths: tuple[str, ...] = Field((), description="Member JSONL files, a directory of them, or one file to split.")
    heldout_path: str | None = Field(None, description="Held-out JSONL (with --data).")
    eval_examples: int = Field(128, ge=1, description="Held-out examples evaluated after each round.")
    metric: str | None = Field("token-accuracy", description="Task metric after each round, or None.")
    engine: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address (engine ray); None starts a local Ray.")
    workers: int = Field(2, ge=1, le=4096, description="Worker processes (engine ray): each holds one base model.")
    threads_per_worker: int = Field(1, ge=1, le=256, description="torch threads per worker.")
    connect_timeout_s: float = Field(10.0, gt=0, description="How long a Ray address may take to answer.")

    @field_validator("epsilons")
    @classmethod
    def _epsilons(cls, v: tuple[float | None, ...]) -> tuple[float | None, ...]:
        if not v:
            raise ValueError("give at least one --epsilon")
        for e in v:
            if e is not None and not (math.isfinite(e) and e > 0):
                raise ValueError(f"--epsilon {e}: must be a finite number > 0 (or 'none' for the non-private baseline)")
        if len(set(v)) != len(v):
            raise ValueError("--epsilon lists a value twice")
        return v

    @property
    def cohort_size(self) -> int:
        return max(1, min(self.members, round(self.cohort_fraction * self.members)))

    @property
    def planned_releases(self) -> int:
        """Rounds each member calibrates its noise for."""
        if self.member_rounds is not None:
            return self.member_rounds
        return max(1, min(self.rounds, math.ceil(self.cohort_size / self.members * self.rounds)))

    @property
    def noise(self) -> str:
        return "seeded" if self.reproducible else "csprng"
