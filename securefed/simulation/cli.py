"""``securefed simulate``: many members on one machine or a Ray cluster, on the real training and
aggregation code, to see what a federation of N members would reach at a privacy budget.

Registration stays cheap: torch, Ray and matplotlib load inside the handler.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

from securefed.errors import ConfigError

DESCRIPTION = """\
Simulate a federation of --members members for --rounds rounds at each --epsilon, without certificates,
daemons or ports. Every member runs the member's real path (noise calibrated to its budget, its budget
guard, DP-SGD with Opacus, the strategy's payload) and every round is summed by the real secure-aggregation
state machines (or CKKS, or a plain sum). Each round samples a cohort (--cohort-fraction) and injects
dropouts (--dropout-rate); the threshold and the accountants follow. Members hold a non-IID split of the
shipped demo corpus (pydoc_data, by topic) or of your data (--data: one JSONL per member, a directory of
them, or one file to split; --heldout). Per round it prints held-out loss and perplexity, the task metric,
epsilon spent per member and seconds; --json prints one JSON array of per-round records on stdout, --plot
draws utility against rounds for each epsilon.

Engines: --engine local runs every member in this process on one base model; --engine ray runs them on Ray
workers (one base model each): a local Ray with --workers processes, or a cluster at --address
(e.g. ray://HEAD:10001; every node needs securefed installed). A worker that dies is a dropout.

DP noise comes from the CSPRNG, as on a real member, so two runs differ by their noise. --reproducible
derives noise, batches and rounding from --seed instead: runs (and engines) then agree to the bit, and
anyone who knows the seed knows the noise, so such a run is a measurement, never a privacy guarantee.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate many members on the real training and aggregation code "
                       "(locally or on Ray)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, help="members in the federation (required unless --data gives one "
                   "file per member)")
    p.add_argument("--rounds", type=int, required=True, help="federated rounds for each epsilon")
    p.add_argument("--epsilon", nargs="+", required=True, type=_epsilon, metavar="E",
                   help="each member's target epsilon; several values run one simulation each; 'none' is the "
                   "non-private baseline")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of every member's budget (default 1e-5)")
    p.add_argument("--accountant", choices=["rdp", "prv"], default="rdp", help="the members' accountant")
    p.add_argument("--cohort-fraction", type=float, default=1.0, help="share of members sampled per round (default 1)")
    p.add_argument("--dropout-rate", type=float, default=0.0,
                   help="probability that a sampled member drops out, at a random protocol stage (default 0)")
    p.add_argument("--member-rounds", type=int, help="releases each member calibrates its noise for (default: the "
                   "rounds it expects to be sampled into)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, cohorts and dropouts (default 0)")
    p.add_argument("--reproducible", action="store_true", help="derive DP noise, batches and rounding from --seed "
                   "too: identical runs, NOT private (see above)")
    p.add_argument("--mode", choices=["secagg", "ckks", "plaintext"], default="secagg",
                   help="how updates are summed (default secagg)")
    p.add_argument("--strategy", choices=["fedavg", "fedprox", "scaffold", "fednova"], default="fedavg")
    p.add_argument("--data", nargs="+", default=[], metavar="PATH",
                   help="member JSONL files (one each), a directory of them, or one JSONL to split (default: the "
                   "demo corpus)")
    p.add_argument("--heldout", metavar="FILE", help="held-out JSONL no member trains on (with --data)")
    p.add_argument("--model", type=Path, metavar="DIR", help="base checkpoint (save_pretrained directory, read-only; "
                   "default: the tiny preset, built once under ~/.cache/securefed)")
    p.add_argument("--lr", type=float, default=0.1, help="members' learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, default=8, help="expected Poisson batch (default 8)")
    p.add_argument("--steps", type=int, default=4, help="local DP-SGD steps per round (default 4)")
    p.add_argument("--max-seq-len", type=int, default=32, help="tokens per example (default 32)")
    p.add_argument("--clip", type=float, default=1.0, help="per-example clipping norm (default 1)")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where members run (default local)")
    p.add_argument("--address", help="Ray cluster to use (--engine ray); default: start a local Ray")
    p.add_argument("--workers", type=int, default=2, help="Ray worker processes, one base model each (default 2)")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds a Ray --address may take to answer")
    p.add_argument("--eval-examples", type=int, default=128, help="held-out examples per evaluation (default 128)")
    p.add_argument("--metric", default="token-accuracy", help="task metric: token-accuracy (default), "
                   "package.module:function, or none")
    p.add_argument("--json", action="store_true", help="print one JSON array of per-round records on stdout")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw utility against rounds for each epsilon")
    p.set_defaults(handler=_simulate)


def _epsilon(text: str) -> float | None:
    if text.lower() in ("none", "inf", "non-private"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or 'none')") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: epsilon must be a finite number > 0 (or 'none')")
    return value


def _simulate(args: argparse.Namespace) -> int:
    if args.engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray needs Ray: pip install 'securefed[sim]'")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plot needs matplotlib: pip install 'securefed[sim]'")
    if args.engine == "local" and args.address:
        raise ConfigError("--address names a Ray cluster: add --engine ray")
    from securefed.simulation import app  # torch, transformers, opacus

    engine_factory = None
    if args.engine == "ray":
        if not args.address:
            # Before Ray loads: a Ray this process starts binds its node to the loopback address.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from securefed.simulation.ray_engine import RayEngine

        engine_factory = RayEngine
    records = app.simulate(args, engine_factory)
    if args.plot is not None:
        from securefed.simulation.plot import plot_records

        plot_records(records, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0
