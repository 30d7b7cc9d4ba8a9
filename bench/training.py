"""Local-training benchmark: DP-SGD vs non-private step time and memory, per model, dtype, quantization
and clipping mode, on the member's real training path.

``python bench/training.py [--json] [--quick] [--models tiny,small,qwen2-0.5b]`` prints one JSON array.

``kind="step"`` records (one per model x dtype x quantization x clipping) have the fields ``model``,
``params``, ``adapter_params``, ``dtype``, ``quantization``, ``device``, ``batch``, ``seq``,
``plain_step_s``, ``dp_step_s``, ``overhead`` (= dp / plain), ``peak_rss_mb``, ``tokens_per_s`` (DP
step), the memory plan the member chose (``physical_batch``, ``gradient_checkpointing``,
``estimated_step_gib``, ``max_memory_gb``) and ``peak_gpu_mb`` on CUDA. Each record runs in a fresh
subprocess: load the model as a member would (``[model]`` settings, memory plan), then plain and DP
steps interleaved on the same batch so CPU contention hits both alike. Both use the same loss
(chunked over the sequence), micro-batches and checkpointing; the DP step is the production path
(Opacus per-sample clipping, CSPRNG noise, Poisson-batch scaling). ``peak_rss_mb`` is the worker's
peak resident memory (``ru_maxrss``: model, both steps, the framework).

``qwen2-0.5b`` is a full-depth Qwen2-0.5B-shaped model (random weights from its config, saved in bf16
like the released checkpoint) at batch 16, seq 256 under ``max_memory_gb = 8``: fp32, bf16 and nf4
side by side. It is heavy on a CPU (a step is minutes on two cores); ``--steps`` keeps it short.

``smollm2`` is the real SmolLM2-135M-Instruct (``securefed model get``: its Q4_1 GGUF weights dequantised
to fp32) at the real demo's batch 16 x seq 32; ``--smollm2-dir`` reuses a converted directory (e.g.
``models/smollm2-135m-instruct`` after ``make model``) instead of converting into the temp folder.

``kind="adapter"`` records: trainable LoRA parameters and bytes per round for the presets and a
7B-Llama shape, computed on torch's meta device (no weights).
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

LORA_KW = dict(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))
MODELS = {
    # name: (batch, seq, [(dtype, quantization, clipping)], max_memory_gb)
    "tiny": (16, 64, [("fp32", "none", "hooks"), ("fp32", "none", "ghost")], None),
    "small": (16, 128, [("fp32", "none", "hooks"), ("fp32", "none", "ghost")], None),
    "qwen2-0.5b": (16, 256, [("fp32", "none", "hooks"), ("bf16", "none", "hooks"), ("fp32", "nf4", "hooks")], 8.0),
    "smollm2": (16, 32, [("fp32", "none", "hooks")], None),
}
# On a CPU without bf16/4-bit kernels those steps take hours: --probe-others times only the first
# combination in full and measures the others' peak memory with one micro-batch.



def build_qwen05(directory: Path) -> Path:
    """Qwen2-0.5B's config (full depth, 151,936-token vocabulary), random weights, saved in bf16."""
    import torch
    import transformers as T

    from securefed.training.preset import train_tokenizer

    cfg = T.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # not secret: benchmark weights
        model = T.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(directory))
    train_tokenizer(512).save_pretrained(str(directory))
    return directory


def worker(spec: dict) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(spec["threads"]))
    from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings, ModelSettings
    from securefed.training.data import demo_client_dataset
    from securefed.training.dp import DPTrainer, enable_gradient_checkpointing
    from securefed.training.loss import SequenceLoss
    from securefed.training.memory import plan_for_checkpoint
    from securefed.training.model import count_trainable, load_model
    from securefed.training.rng import CsprngSource

    batch, seq = spec["batch"], spec["seq"]
    ms = ModelSettings(dtype=spec["dtype"], quantization=spec["quantization"], device=spec.get("device", "auto"),
                       max_memory_gb=spec["max_memory_gb"])
    lora = LoraSettings(**LORA_KW)
    plan = plan_for_checkpoint(spec["dir"], ms, lora, logical_batch=batch, seq_len=seq)
    lm = load_model(spec["dir"], lora, ms, quantization=plan.quantization)
    if plan.gradient_checkpointing:
        enable_gradient_checkpointing(lm.model)
    model = lm.model
    loss = SequenceLoss(model, lm.kind)
    data = demo_client_dataset(lm.tokenizer, 0, 3, seq, kind=lm.kind)
    rows = data.batch(list(range(batch)))
    device = next(p for p in model.parameters() if p.requires_grad).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    phys = plan.physical_batch_size

    def plain() -> None:
        # The same model, Opacus' hooks switched off: one copy of the weights serves both steps.
        trainer.module.disable_hooks()
        try:
            model.train()
            opt.zero_grad(set_to_none=True)
            for s in range(0, batch, phys):
                micro = {k: v[s:s + phys].to(device) for k, v in rows.items()}
                (loss(model, micro).sum() / batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            trainer.module.enable_hooks()

    settings = LocalTrainingSettings(learning_rate=0.05, batch_size=batch, steps=1, clip_norm=1.0, max_seq_len=seq)
    trainer = DPTrainer(model, settings, 1.0, batch, ClippingMode(spec["clipping"]), CsprngSource(), loss=loss,
                        physical_batch_size=phys)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tp, td = [], []
    if spec.get("probe"):
        # Memory probe: one DP step on one micro-batch of the planned size. Micro-batches run one after
        # another and free their activations, so this reaches a full step's peak at 1/k of its time.
        rows = {k: v[:phys] for k, v in rows.items()}
        trainer.expected_batch_size = phys
        try:
            t0 = time.perf_counter()
            trainer.step(rows)
            sync()
            micro = time.perf_counter() - t0
        finally:
            trainer.close()
        out = {"probe": "one DP micro-batch of the planned size (a full step's peak memory)",
               "micro_batch_dp_s": round(micro, 3), "plain_step_s": None, "dp_step_s": None}
    try:
        for i in range(0 if spec.get("probe") else spec["warmup"] + spec["steps"]):
            t0 = time.perf_counter()
            plain()
            sync()
            t1 = time.perf_counter()
            trainer.step(rows)
            sync()
            t2 = time.perf_counter()
            if i >= spec["warmup"]:
                tp.append(t1 - t0)
                td.append(t2 - t1)
    finally:
        trainer.close()
    if not spec.get("probe"):
        p, d = statistics.median(tp), statistics.median(td)
        out = {"plain_step_s": round(p, 4), "dp_step_s": round(d, 4), "overhead": round(d / p, 3),
               "tokens_per_s": round(batch * seq / d, 1)}
    out.update({"params": sum(x.numel() for x in model.get_base_model().parameters()) - count_trainable(model),
           "adapter_params": count_trainable(model), "device": str(device),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "physical_batch": phys, "gradient_checkpointing": plan.gradient_checkpointing,
           "estimated_step_gib": round(plan.estimated_gb, 2), "chunked_loss": loss.chunked, "steps_timed": len(tp)})
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _sub(spec: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1][:300]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def adapter_records(model_dirs: dict[str, str]) -> list[dict]:
    from transformers import LlamaConfig

    from securefed.training.config import LoraSettings
    from securefed.training.model import layout_for_config

    recs = []
    for ffa in (False, True):
        lora = LoraSettings(**LORA_KW, freeze_a=ffa)
        name = "FFA-LoRA (B only)" if ffa else "LoRA"
        for preset, d in model_dirs.items():
            lay = layout_for_config(d, lora)
            recs.append({"kind": "adapter", "model": preset, "lora": name, "lora_rank": 8, "targets": "q_proj,v_proj",
                         "adapter_params": lay.total_size, "adapter_bytes_per_round": lay.nbytes})
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000)
        lay = layout_for_config(cfg, lora)
        recs.append({"kind": "adapter", "model": "llama-7b-shape (meta device, no weights)", "lora": name,
                     "lora_rank": 8, "targets": "q_proj,v_proj", "adapter_params": lay.total_size,
                     "adapter_bytes_per_round": lay.nbytes})
    return recs


def run(models: list[str], steps: int, threads: int, probe_others: bool = False,
        smollm2_dir: str | None = None) -> list[dict]:
    from securefed.models.cli import get_model
    from securefed.training.preset import build_tiny_model

    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs: dict[str, str] = {}
        for name in models:
            t0 = time.perf_counter()
            if name == "qwen2-0.5b":
                dirs[name] = str(build_qwen05(Path(tmp) / name))
            elif name == "smollm2":
                dirs[name] = str(get_model(name, Path(smollm2_dir or Path(tmp) / name), say=lambda _: None).out_dir)
            else:
                dirs[name] = str(build_tiny_model(Path(tmp) / name, name, pretrain=False))
            print(f"[bench] built {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for name in models:
            batch, seq, combos, cap = MODELS[name]
            big = name == "qwen2-0.5b"
            for dtype, quant, clipping in combos:
                spec = {"dir": dirs[name], "batch": batch, "seq": seq, "dtype": dtype, "quantization": quant,
                        "clipping": clipping, "max_memory_gb": cap, "threads": threads,
                        "warmup": 1 if not big else 0, "steps": steps if not big else max(1, steps // 4),
                        "probe": big and probe_others and (dtype, quant, clipping) != combos[0]}
                t0 = time.perf_counter()
                rec = {"kind": "step", "model": name, "dtype": dtype, "quantization": quant, "clipping": clipping,
                       "batch": batch, "seq": seq, "max_memory_gb": cap, "lora": "r=8 q_proj,v_proj",
                       "noise": "csprng", "torch_threads": threads}
                rec.update(_sub(spec))
                records.append(rec)
                print(f"[bench] {name} {dtype} {quant} {clipping}: {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                      flush=True)
        records.extend(adapter_records({k: v for k, v in dirs.items() if k != "qwen2-0.5b"}))
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON array (the default output)")
    ap.add_argument("--quick", action="store_true", help="tiny preset only, fewer steps")
    ap.add_argument("--models", default="tiny,small,qwen2-0.5b",
                    help="comma-separated: tiny, small, qwen2-0.5b, smollm2 (the real model, not in the default)")
    ap.add_argument("--smollm2-dir", help="smollm2: a `securefed model get` directory (converted if absent)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per record (a quarter of them for qwen2-0.5b)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                    help="torch threads per worker (default 1: stable ratios on a shared machine)")
    ap.add_argument("--probe-others", action="store_true",
                    help="qwen2-0.5b: time only fp32 in full; bf16 and nf4 get a one-micro-batch memory probe")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    models = ["tiny"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    print(json.dumps(run(models, 3 if args.quick else args.steps, args.threads, args.probe_others,
                         args.smollm2_dir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
