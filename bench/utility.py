"""What privacy costs in model quality: federated LoRA fine-tuning with and without DP, against training
alone and pooled training, on the shipped real task or the tiny preset.

Real model, real task (the question the platform exists to answer)::

    python bench/utility.py --model DIR --task icd10 [--quick] [--out results.jsonl]

DIR is a checkpoint directory (``securefed model get smollm2-135m-instruct --out DIR``). The task is
``securefed task icd10`` (ICD-10-CM coding, 3 members split by chapter), built in memory by the same
code, or read from ``--data DIR`` (that command's output). One JSON record per setting, with
``model``, ``task``, ``setting``, ``epsilon``, ``rounds``, ``steps`` (local steps per round),
``batch`` (expected Poisson batch of a member; of the pooled data for ``centralised``),
``heldout_ppl_before``/``after`` and ``task_metric_before``/``after`` on the global held-out split no
member trains on, and ``seconds``. Settings (``--settings`` picks some):

- ``base``: the base model with the round-0 adapter (no training);
- ``local-only``: each member alone, non-private (its data never leaves it, so it needs no DP), for the
  same rounds and steps; ``task_metric_after`` is the members' mean, ``best_member`` the best one;
- ``centralised``: non-private on the pooled data, the same rounds and steps with the members' summed
  batch (the upper bound);
- ``federated``: FedAvg, non-private;
- ``fed-clip``: FedAvg, per-example clipping at C but no noise (not private): separates what clipping
  does from what the noise does;
- ``fed-dp-8``, ``fed-dp-3``, ``fed-dp-1``: FedAvg with DP-SGD at that epsilon (each member calibrates its
  noise so that all rounds spend it; delta below 1/N);
- ``fed-ffa-8``, ``fed-ffa-1``: the same with FFA-LoRA (only B trained and aggregated).

Every training setting uses the members' real path: ``train_local`` (Opacus DP-SGD, Poisson batches
in micro-batches, the configured optimizer), the FedAvg strategy's payloads and server update, and
the sum through the pairwise-masking state machines in process (``securefed.secagg.simulation``:
fixed-point encoding, masks, unmasking). Every setting starts from the same adapter with the same
torch seed for sampling and noise (reproducible, *not* the CSPRNG a member uses), so settings differ
only in what they set. The goals (issue 16): DP at epsilon 8 keeps >= 90% of the federated
non-private gain on the task metric, epsilon 1 >= 50%, and federated epsilon 8 beats the best member
alone; ``kept`` in each record is its share of that gain.

Tiny preset (the original bench, kept): ``python bench/utility.py [--json] [--rounds 3]`` or
``--model tiny``: held-out perplexity on the demo corpus (pydoc_data topics), 3 members, 24 local
steps of 16 x 32 tokens per round, lr 0.2, LoRA r = 4 on q/k/v/o; settings non-private, DP at
epsilon 8, 3, 1 and FFA-LoRA at 8 (delta 1e-5).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_CLIENTS = 3
DELTA = 1e-5
TRAIN = dict(learning_rate=0.2, batch_size=16, steps=24, max_seq_len=32, clip_norm=1.0, clipping="hooks",
             secure_mode=False)
LORA = dict(rank=4, alpha=8.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
SETTINGS = [(None, False), (8.0, False), (3.0, False), (1.0, False), (8.0, True)]
REAL_SETTINGS = ("base", "local-only", "centralised", "federated", "fed-clip", "fed-dp-8", "fed-dp-3", "fed-dp-1",
                 "fed-ffa-8", "fed-ffa-1")
QUICK_SETTINGS = ("base", "local-only", "federated", "fed-dp-8", "fed-dp-1")


# --------------------------------------------------------------------------------------------- tiny preset

def run_setting(model_dir: str, epsilon: float | None, ffa: bool, rounds: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from securefed.privacy.budget import calibrate_noise
    from securefed.strategies import StrategySettings, make_strategy
    from securefed.training.adapter import adapter_to_vector, load_adapter_vector
    from securefed.training.config import LocalTrainingSettings, LoraSettings
    from securefed.training.data import demo_client_dataset, demo_heldout_dataset, evaluate
    from securefed.training.dp import plan_steps, train_local
    from securefed.training.model import load_model

    t0 = time.perf_counter()
    torch.manual_seed(seed)  # not secret: the benchmark's sampling and noise, identical across settings
    lora = LoraSettings(**LORA, freeze_a=ffa)
    lm = load_model(model_dir, lora)
    train = LocalTrainingSettings(**{**TRAIN, "clip_norm": TRAIN["clip_norm"] if epsilon is not None else 1e6})
    data = [demo_client_dataset(lm.tokenizer, i, N_CLIENTS, train.max_seq_len) for i in range(N_CLIENTS)]
    held = demo_heldout_dataset(lm.tokenizer, N_CLIENTS, train.max_seq_len)
    sigmas = []
    for d in data:
        q, steps = plan_steps(train, len(d))
        sigmas.append(0.0 if epsilon is None else calibrate_noise(epsilon, DELTA, q, steps * rounds, "rdp"))
    global_vec, layout = adapter_to_vector(lm.model)
    strategy = make_strategy(StrategySettings(kind="fedavg", max_samples=1000, delta_bound=1.0), dim=layout.total_size)
    _, before = evaluate(lm.model, held, max_examples=128)
    for _ in range(rounds):
        total = np.zeros(strategy.payload_size)
        for d, sigma in zip(data, sigmas):
            load_adapter_vector(lm.model, global_vec, layout)
            result = train_local(lm.model, d, train, sigma)
            total += strategy.client_payload(result).vector
        global_vec = strategy.server_apply(global_vec, total, N_CLIENTS).global_vec
    load_adapter_vector(lm.model, global_vec, layout)
    _, after = evaluate(lm.model, held, max_examples=128)
    return {"model": "tiny", "task": "demo", "setting": "federated" if epsilon is None else
            f"fed-{'ffa' if ffa else 'dp'}-{epsilon:g}", "epsilon": epsilon,
            "delta": None if epsilon is None else DELTA, "lora": "ffa-lora" if ffa else "lora",
            "rounds": rounds, "steps": TRAIN["steps"], "batch": TRAIN["batch_size"],
            "heldout_ppl_before": round(before, 3), "heldout_ppl_after": round(after, 3),
            "task_metric_before": None, "task_metric_after": None,
            "noise_multipliers": [round(s, 4) for s in sigmas], "adapter_params": layout.total_size,
            "seconds": round(time.perf_counter() - t0, 1)}


def tiny_main(rounds: int) -> list[dict]:
    from securefed.training.preset import build_tiny_model

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "tiny"))
        for epsilon, ffa in SETTINGS:
            records.append(run_setting(model_dir, epsilon, ffa, rounds))
            print(f"[bench] epsilon={epsilon} ffa={ffa}: {records[-1]['heldout_ppl_after']}", file=sys.stderr,
                  flush=True)
    base = next(r for r in records if r["epsilon"] is None)
    gain = base["heldout_ppl_before"] - base["heldout_ppl_after"]
    for r in records:
        r["kept"] = round((r["heldout_ppl_before"] - r["heldout_ppl_after"]) / gain, 3) if gain > 0 else None
    return records


# --------------------------------------------------------------------------------------------- real model

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON array (the default output)")
    ap.add_argument("--model", default="tiny", help="'tiny' (the preset, demo corpus) or a checkpoint directory")
    ap.add_argument("--task", default=None, choices=["icd10"], help="the task (default: icd10 with a checkpoint)")
    ap.add_argument("--data", type=Path, help="a `securefed task icd10` directory (default: built in memory)")
    ap.add_argument("--quick", action="store_true", help="a reduced run (under 15 minutes on a 2-core CPU)")
    ap.add_argument("--settings", help=f"comma-separated subset of {','.join(REAL_SETTINGS)}")
    ap.add_argument("--rounds", type=int, help="federated rounds (default 3 tiny, 2 real, 1 quick)")
    ap.add_argument("--steps", type=int, help="local DP-SGD steps per round (default 3, quick 2)")
    ap.add_argument("--batch", type=int, help="expected logical (Poisson) batch per member (default 64, quick 32)")
    ap.add_argument("--physical", type=int, default=32, help="rows per micro-batch")
    ap.add_argument("--max-seq-len", type=int, default=80, help="tokens per record (ICD records: mean ~63)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    ap.add_argument("--lora-layers", type=int, default=10, help="LoRA on q/v of the top N layers (0: all)")
    ap.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    ap.add_argument("--lr", type=float, default=1e-2, help="learning rate (every setting)")
    ap.add_argument("--clip", type=float, default=1.0, help="DP clipping norm C")
    ap.add_argument("--delta", type=float, default=DELTA, help="DP delta (below 1/N of every member)")
    ap.add_argument("--eval-records", type=int, help="global held-out records evaluated (default 64, quick 32)")
    ap.add_argument("--max-new-tokens", type=int, default=10, help="greedy generation budget (codes: <= 9 tokens)")
    ap.add_argument("--max-per-chapter", type=int, default=2000, help="ICD-10 codes per chapter (as the task CLI)")
    ap.add_argument("--options", type=int, help="multiple-choice options per held-out record (choice_accuracy; "
                    "default 4, quick 0: none)")
    ap.add_argument("--metric", default="auto", help="the task metric (auto: exact match for codes)")
    ap.add_argument("--secagg", choices=["on", "off"], default="on",
                    help="sum the members' payloads through the pairwise-masking state machines (off: a plain sum)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed for sampling and noise (not secret)")
    ap.add_argument("--out", type=Path, help="also append each record to this JSONL file as it completes")
    args = ap.parse_args(argv)
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # train_local warns about the non-secure benchmark RNG on every round
    if args.model == "tiny":
        torch.set_num_threads(1)
        print(json.dumps(tiny_main(args.rounds or 3), indent=1))
        return 0
    if args.options is None:
        args.options = 0 if args.quick else 4
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.utility_task import run_real

    chosen = args.settings.split(",") if args.settings else list(QUICK_SETTINGS if args.quick else REAL_SETTINGS)
    unknown = [s for s in chosen if s not in REAL_SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {unknown}; choose from {', '.join(REAL_SETTINGS)}")
    records = run_real(args, chosen)
    print(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
