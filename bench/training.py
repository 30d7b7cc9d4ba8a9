"""Local-training benchmark: DP-SGD vs non-private step time and memory, and LoRA adapter sizes.

``python bench/training.py [--json] [--quick]`` prints one JSON array of records:

- ``kind="step"``: one record per (preset, clipping mode). ``plain_step_s`` / ``dp_step_s`` are median
  wall-clock seconds of one training step on the *same* batch and the same LoRA model (the plain and DP
  steps are interleaved in one process so CPU contention hits both alike); ``overhead = dp / plain``.
  The DP step is the production path: Opacus per-sample clipping, CSPRNG Gaussian noise.
  ``*_peak_rss_delta_mb`` is the rise of the process's peak RSS (``ru_maxrss``) over a few steps, each
  measured in a fresh subprocess after the model is loaded.
- ``kind="adapter"``: trainable LoRA parameters and bytes per round (float32) for the presets and a
  7B-Llama-shaped config, computed from config shapes on torch's meta device (no weights).

``--quick`` runs only the tiny preset, with fewer steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 16
SEQ = {"tiny": 64, "small": 128}
LORA_KW = dict(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))


def _setup(model_dir: str, preset: str):
    import torch

    from securefed.training.config import LoraSettings
    from securefed.training.data import demo_client_dataset
    from securefed.training.model import load_model

    lm = load_model(model_dir, LoraSettings(**LORA_KW))
    data = demo_client_dataset(lm.tokenizer, 0, 3, SEQ[preset])
    batch = data.batch(list(range(BATCH)))
    torch.set_num_threads(1)  # the machine is shared: one thread gives stable, comparable timings
    return lm, batch


def _plain_step_fn(model, batch, lr=0.05):
    import torch

    from securefed.training.dp import per_sample_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_sample_loss(logits, batch["labels"]).mean().backward()
        opt.step()

    return step


def _dp_trainer(model, mode: str):
    from securefed.training.config import ClippingMode, LocalTrainingSettings
    from securefed.training.dp import DPTrainer
    from securefed.training.rng import CsprngSource

    settings = LocalTrainingSettings(learning_rate=0.05, batch_size=BATCH, steps=1, clip_norm=1.0)
    return DPTrainer(model, settings, 1.0, BATCH, ClippingMode(mode), CsprngSource())


def worker_time(model_dir: str, preset: str, mode: str, steps: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    lm_plain, batch = _setup(model_dir, preset)
    lm_dp, _ = _setup(model_dir, preset)
    plain = _plain_step_fn(lm_plain.model, batch)
    trainer = _dp_trainer(lm_dp.model, mode)
    try:
        plain()
        trainer.step(batch)  # warm-up
        tp, td = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            plain()
            tp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            trainer.step(batch)
            td.append(time.perf_counter() - t0)
    finally:
        trainer.close()
    p, d = statistics.median(tp), statistics.median(td)
    return {"plain_step_s": round(p, 5), "dp_step_s": round(d, 5), "overhead": round(d / p, 3)}


def worker_mem(model_dir: str, preset: str, mode: str, steps: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    lm, batch = _setup(model_dir, preset)
    if mode == "plain":
        step = _plain_step_fn(lm.model, batch)
        close = None
    else:
        trainer = _dp_trainer(lm.model, mode)
        step, close = (lambda: trainer.step(batch)), trainer.close
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if close:
        close()
    return {"peak_rss_delta_mb": round((after - before) / 1024, 2), "peak_rss_mb": round(after / 1024, 1)}


def _sub(fn: str, *args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", fn, *map(str, args)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def adapter_records(model_dirs: dict[str, str]) -> list[dict]:
    from transformers import LlamaConfig

    from securefed.training.config import LoraSettings
    from securefed.training.model import layout_for_config

    lora = LoraSettings(**LORA_KW)
    recs = []
    for preset, d in model_dirs.items():
        lay = layout_for_config(d, lora)
        recs.append({"kind": "adapter", "model": f"preset-{preset}", "lora_rank": 8, "targets": "q_proj,v_proj",
                     "trainable_params": lay.total_size, "adapter_bytes_per_round": lay.nbytes})
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000)
    lay = layout_for_config(cfg, lora)
    recs.append({"kind": "adapter", "model": "llama-7b-shape (meta device, no weights)", "lora_rank": 8,
                 "targets": "q_proj,v_proj", "trainable_params": lay.total_size,
                 "adapter_bytes_per_round": lay.nbytes})
    return recs


def run(quick: bool = False) -> list[dict]:
    from securefed.training.preset import build_tiny_model

    presets = ["tiny"] if quick else ["tiny", "small"]
    steps = 3 if quick else 8
    mem_steps = 2 if quick else 4
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {p: str(build_tiny_model(Path(tmp) / p, p, pretrain=False)) for p in presets}
        for preset in presets:
            plain_mem = _sub("mem", dirs[preset], preset, "plain", mem_steps)
            for mode in ("ghost", "hooks"):
                rec = {"kind": "step", "preset": preset, "clipping": mode, "batch": BATCH, "seq_len": SEQ[preset],
                       "lora": "r=8 q_proj,v_proj", "noise": "csprng", "torch_threads": 1}
                rec.update(_sub("time", dirs[preset], preset, mode, steps))
                dp_mem = _sub("mem", dirs[preset], preset, mode, mem_steps)
                rec["plain_peak_rss_delta_mb"] = plain_mem["peak_rss_delta_mb"]
                rec["dp_peak_rss_delta_mb"] = dp_mem["peak_rss_delta_mb"]
                rec["dp_peak_rss_mb"] = dp_mem["peak_rss_mb"]
                rec["plain_peak_rss_mb"] = plain_mem["peak_rss_mb"]
                records.append(rec)
        records.extend(adapter_records(dirs))
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON array (the default output)")
    ap.add_argument("--quick", action="store_true", help="tiny preset only, fewer steps")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        fn, model_dir, preset, mode, steps = args.worker
        res = (worker_time if fn == "time" else worker_mem)(model_dir, preset, mode, int(steps))
        print(json.dumps(res))
        return 0
    print(json.dumps(run(args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
