"""What privacy costs in model quality: held-out perplexity after federated LoRA fine-tuning, with and
without DP, LoRA against FFA-LoRA.

``python bench/utility.py [--json] [--rounds 3]`` prints one JSON array, one record per setting, with
the fields ``epsilon`` (``null`` for non-private), ``lora`` (``"lora"`` or ``"ffa-lora"``), ``rounds``,
``heldout_ppl_before``, ``heldout_ppl_after``, plus ``kept`` (the share of the non-private
improvement this setting keeps), each client's calibrated ``noise_multipliers`` and ``seconds``.

Settings: non-private FedAvg; DP-SGD at epsilon 1, 3 and 8 (delta 1e-5); FFA-LoRA at epsilon 8. The
data, model and training are the demo's: the tiny preset (briefly pretrained on public stdlib
docstrings), the shipped non-IID split (``pydoc_data`` topics, 3 members, held-out topics for
perplexity), 24 local steps of Poisson batches of 16 x 32 tokens per round, learning rate 0.2, LoRA
r = 4 on q/k/v/o, clipping norm 1, FedAvg weighted by examples. Each member calibrates its own noise
multiplier so that ``rounds`` releases spend its epsilon (RDP accountant), as the daemon does.

The federation runs in this process through the members' real training path (``train_local``, the
FedAvg strategy's payloads and server update); secure aggregation is left out because it returns the
exact sum (up to its 2^-32 fixed-point grid), so it does not move these numbers. Every setting uses
the same seed (torch's generator for Poisson sampling and noise: reproducible, *not* the CSPRNG the
daemon uses), so the settings differ only in what they set.
"""

from __future__ import annotations

import argparse
import json
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
    return {"epsilon": epsilon, "delta": None if epsilon is None else DELTA, "lora": "ffa-lora" if ffa else "lora",
            "rounds": rounds, "heldout_ppl_before": round(before, 3), "heldout_ppl_after": round(after, 3),
            "noise_multipliers": [round(s, 4) for s in sigmas], "adapter_params": layout.total_size,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON array (the default output)")
    ap.add_argument("--rounds", type=int, default=3, help="federated rounds per setting (default 3, as the demo)")
    args = ap.parse_args(argv)
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # train_local warns about the non-secure benchmark RNG on every round
    torch.set_num_threads(1)
    from securefed.training.preset import build_tiny_model

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "tiny"))
        for epsilon, ffa in SETTINGS:
            records.append(run_setting(model_dir, epsilon, ffa, args.rounds))
            print(f"[bench] epsilon={epsilon} ffa={ffa}: {records[-1]['heldout_ppl_after']}", file=sys.stderr,
                  flush=True)
    base = next(r for r in records if r["epsilon"] is None)
    gain = base["heldout_ppl_before"] - base["heldout_ppl_after"]
    for r in records:
        r["kept"] = round((r["heldout_ppl_before"] - r["heldout_ppl_after"]) / gain, 3) if gain > 0 else None
    print(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
