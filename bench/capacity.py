"""Members of unequal capacity: what training only the top layers saves, measured on one DP-SGD step.

``python bench/capacity.py --model DIR [--json] [--seq 2048] [--cap-gb 4] [--rows 1]`` prints one
JSON array of ``kind="capacity"`` records, one per setting (LoRA in every layer; the top layers the
memory planner picks for ``[capacity] layers = "auto"`` under ``max_memory_gb``), each measured in a
fresh subprocess: ``model``, ``seq``, ``rows``, ``max_memory_gb``, ``trained_layers`` (null: all),
``layers``, ``trainable_params``, ``estimated_step_gib`` (the planner's estimate for a micro-batch),
``peak_rss_gib`` (the worker's ``ru_maxrss``: model, framework and one step), ``step_s``,
``fits_cap`` (measured peak within the cap) and ``planner_fits`` (the estimate within the cap).
The step is the member's: fp32, no gradient checkpointing (``gradient_checkpointing = false``: the
member's choice here, since with checkpointing a 135M model fits 4 GB whole), physical batch 1,
Opacus hooks, the LoRA of the layers below the trained ones frozen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def worker(model_dir: str, layers: str, seq: int, rows: int, cap: float) -> dict:
    import resource
    import time

    import torch

    from securefed.errors import ConfigError
    from securefed.heterogeneous.config import CapacitySettings
    from securefed.heterogeneous.partial import load_for_training
    from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings, ModelSettings
    from securefed.training.data import blocks_from_texts, demo_corpus
    from securefed.training.dp import DPTrainer
    from securefed.training.loss import SequenceLoss
    from securefed.training.memory import MemoryPlan, ModelShape, estimate_step_bytes, plan_for_checkpoint
    from securefed.training.model import layout_for_config, load_config
    from securefed.training.rng import CsprngSource

    torch.set_num_threads(1)
    settings = ModelSettings(device="cpu", dtype="fp32", max_memory_gb=cap, gradient_checkpointing=False)
    lora = LoraSettings()
    layout = layout_for_config(model_dir, lora)
    try:
        plan = plan_for_checkpoint(model_dir, settings, lora, logical_batch=8, seq_len=seq, layers=layers)
        planner_fits = True
    except ConfigError:  # measure it all the same, at the smallest setting the planner tried
        shape = ModelShape.from_config(load_config(model_dir)[0])
        est = estimate_step_bytes(shape, dtype="fp32", quantization="none", physical_batch=1, seq_len=seq,
                                  checkpointing=False, adapter_params=layout.total_size,
                                  adapted_layers=sum(".lora_B." in n for n in layout.names))
        plan, planner_fits = MemoryPlan(1, False, "none", est), False
    loaded, part = load_for_training(model_dir, settings, lora, plan, CapacitySettings(layers=layers), layout.to_json())
    topics = demo_corpus()
    batch = blocks_from_texts([topics[k] for k in sorted(topics)[:30]], loaded.tokenizer, seq).batch(list(range(rows)))
    training = LocalTrainingSettings(batch_size=rows, steps=1, max_seq_len=seq, learning_rate=0.01)
    trainer = DPTrainer(loaded.model, training, 1.0, rows, ClippingMode.HOOKS, CsprngSource(),
                        loss=SequenceLoss(loaded.model, loaded.kind), physical_batch_size=1)
    t0 = time.perf_counter()
    try:
        trainer.step(batch)
    finally:
        trainer.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    n_layers = len(part.groups.layers) if part else int(getattr(loaded.model.config, "num_hidden_layers", 0))
    return {"kind": "capacity", "model": Path(model_dir).name, "seq": seq, "rows": rows, "max_memory_gb": cap,
            "trained_layers": plan.trained_layers, "layers": n_layers,
            "trainable_params": sum(p.numel() for p in loaded.model.parameters() if p.requires_grad),
            "estimated_step_gib": round(plan.estimated_gb, 2), "peak_rss_gib": round(peak, 2),
            "step_s": round(time.perf_counter() - t0, 1), "fits_cap": peak <= cap, "planner_fits": planner_fits}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a checkpoint directory (e.g. SmolLM2-135M-Instruct)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--cap-gb", type=float, default=4.0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker, args.seq, args.rows, args.cap_gb)))
        return 0
    records = []
    for layers in ("all", "auto"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--seq", str(args.seq), "--rows",
                              str(args.rows), "--cap-gb", str(args.cap_gb), "--worker", layers],
                             capture_output=True, text=True, check=True)
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(records, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
