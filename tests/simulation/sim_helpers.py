"""Helpers for the simulation tests: small settings and the workspace spec they need."""

from __future__ import annotations

from pathlib import Path

from securefed.simulation.member import WorkspaceSpec
from securefed.simulation.settings import SimulationSettings, default_training
from securefed.simulation.split import DataSource


def small_settings(model_dir: Path, **over) -> SimulationSettings:
    base = dict(members=6, rounds=2, epsilons=(3.0,), model_dir=model_dir, reproducible=True, eval_examples=16,
                training=default_training().model_copy(update={"steps": 2}))
    base.update(over)
    return SimulationSettings(**base)


def spec_for(settings: SimulationSettings) -> WorkspaceSpec:
    source = DataSource("demo", settings.members, settings.training.max_seq_len, settings.seed,
                        min_examples=settings.training.batch_size)
    return WorkspaceSpec(str(settings.model_dir), settings.lora, settings.training, settings.strategy, source,
                         eval_examples=settings.eval_examples, metric=settings.metric)
