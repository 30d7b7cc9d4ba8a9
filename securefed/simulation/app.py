"""``securefed simulate`` from parsed arguments: settings, the model, the split, the engine, the run, the output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from securefed.config import format_validation_error
from securefed.errors import ConfigError
from securefed.privacy.events import AccountantName
from securefed.simulation.driver import Simulation
from securefed.simulation.engine import Engine, LocalEngine
from securefed.simulation.member import Workspace, WorkspaceSpec
from securefed.simulation.records import RoundRecord
from securefed.simulation.settings import SimulationSettings
from securefed.simulation.split import source_from_paths
from securefed.strategies.config import StrategySettings
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.preset import PRESET_MARKER, build_tiny_model

EngineFactory = Callable[..., Engine]


def default_model_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "securefed" / "tiny-preset"


def settings_from_args(args: argparse.Namespace, model_dir: Path) -> SimulationSettings:
    """The run's settings; every invalid value is one ``ConfigError`` line naming the flag."""
    try:
        training = LocalTrainingSettings(learning_rate=args.lr, batch_size=args.batch_size, steps=args.steps,
                                         max_seq_len=args.max_seq_len, clip_norm=args.clip, clipping=ClippingMode.HOOKS)
        return SimulationSettings(
            members=args.members or 1, rounds=args.rounds, epsilons=tuple(args.epsilon), delta=args.delta,
            accountant=AccountantName(args.accountant), cohort_fraction=args.cohort_fraction,
            dropout_rate=args.dropout_rate, member_rounds=args.member_rounds, seed=args.seed,
            reproducible=args.reproducible, mode=args.mode, training=training,
            lora=LoraSettings(rank=args.lora_rank, alpha=2.0 * args.lora_rank),
            strategy=StrategySettings(kind=args.strategy, max_samples=1000), model_dir=model_dir,
            data_paths=tuple(args.data), heldout_path=args.heldout, eval_examples=args.eval_examples,
            metric=None if (args.metric or "").lower() == "none" else args.metric, engine=args.engine,
            address=args.address, workers=args.workers, connect_timeout_s=args.connect_timeout)
    except ValidationError as exc:
        raise ConfigError(format_validation_error("simulate", exc).replace("simulate: ", "--", 1)) from None


def ensure_model(model: Path | None, say: Callable[[str], None]) -> Path:
    """``--model``, or the tiny preset in the user's cache (built once, ~10 s)."""
    if model is not None:
        if not (model / "config.json").is_file():
            raise ConfigError(f"{model}: no config.json; --model takes a save_pretrained directory")
        return model
    target = default_model_dir()
    if not (target / PRESET_MARKER).is_file():
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target}: exists and is not the securefed preset; remove it or pass --model")
        say(f"building the tiny preset model into {target} (once) ...")
        build_tiny_model(target)
    return target


def simulate(args: argparse.Namespace, engine_factory: EngineFactory | None) -> list[RoundRecord]:
    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    model_dir = ensure_model(args.model, say)
    settings = settings_from_args(args, model_dir)
    source = source_from_paths(args.data, members=args.members, heldout=args.heldout,
                               max_seq_len=settings.training.max_seq_len, seed=settings.seed,
                               min_examples=settings.training.batch_size)
    if source.members != settings.members:
        settings = settings.model_copy(update={"members": source.members})
    spec = WorkspaceSpec(str(model_dir), settings.lora, settings.training, settings.strategy, source,
                         settings.threads_per_worker, settings.eval_examples, settings.metric)
    say(f"{settings.members} members on {source.describe()}; {settings.mode}, {settings.engine} engine, "
        f"{settings.rounds} rounds, cohort {settings.cohort_size}, dropout rate {settings.dropout_rate:g}")
    if settings.reproducible:
        say("WARNING: --reproducible: DP noise is derived from --seed; these results carry no privacy guarantee")
    workspace = Workspace(spec)
    sim = Simulation(settings, workspace, say=say)
    sim.check()  # before any engine starts: a bad argument costs no Ray start-up
    engine: Engine
    if engine_factory is None:
        engine = LocalEngine(workspace)
    else:
        say(f"starting {settings.workers} Ray workers" + (f" on {settings.address}" if settings.address else "") + " ...")
        engine = engine_factory(spec, workers=settings.workers, address=settings.address,
                                connect_timeout_s=settings.connect_timeout_s, threads=settings.threads_per_worker)
    # train_local warns on every call about the reproducible RNG; this run said it once above.
    dp_log = logging.getLogger("securefed.training.dp")
    level = dp_log.level
    dp_log.setLevel(logging.ERROR)
    try:
        records = sim.run(engine)
    finally:
        dp_log.setLevel(level)
        engine.close()
    if args.json:
        print(json.dumps([r.to_dict() for r in records]), flush=True)
    return records
