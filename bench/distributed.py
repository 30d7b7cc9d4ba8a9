"""One member on several processes: DP-SGD tokens/s and step time for 1 vs 2 ranks (gloo, CPU).

``python bench/distributed.py [--json] [--quick] [--real-model DIR] [--steps N]`` prints one JSON array.

One ``kind="ranks"`` record per (model, setting) with the fields ``model``, ``ranks``,
``threads_per_rank``, ``batch``, ``seq``, ``steps``, ``step_s`` (median DP-SGD step, one logical
batch), ``tokens_per_s``, ``start_s`` (workers' start: import, rendezvous, model load; once per
member, not per round), ``vs_one_rank_all_threads`` and ``vs_one_rank_one_thread`` (this setting's
tokens/s over 1 rank using every core's threads, or one thread, measured in the same run). Settings: 1 rank x 1 thread, 1 rank x all threads,
N ranks x (all threads / N). Every step is the member's production path: Poisson sampling with
q = 1 (each step takes the whole fixed batch, so every setting sees the same rows), per-sample
clipping, noise once (secure mode), the ranks' clipped sums all-reduced. The tiny preset is built in
a temporary directory; ``--real-model DIR`` adds a checkpoint directory (SmolLM2-135M-Instruct:
``securefed model get smollm2-135m-instruct --out DIR`` once that command is merged, or any
save_pretrained directory). On a 2-core machine 2 ranks cannot beat 1 rank with 2 threads by much:
they split the same cores; the gain is for members with more devices than one process can use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from securefed.distributed.checks import cpu_cores, rank_layout  # noqa: E402
from securefed.distributed.group import RankGroup  # noqa: E402
from securefed.heterogeneous.config import CapacitySettings  # noqa: E402
from securefed.heterogeneous.partial import load_for_training  # noqa: E402
from securefed.training.adapter import adapter_layout, adapter_to_vector, load_adapter_vector  # noqa: E402
from securefed.training.config import LocalTrainingSettings, LoraSettings, ModelSettings  # noqa: E402
from securefed.training.data import TokenDataset, blocks_from_texts, demo_corpus  # noqa: E402
from securefed.training.dp import train_local  # noqa: E402
from securefed.training.loss import SequenceLoss  # noqa: E402
from securefed.training.memory import plan_for_checkpoint  # noqa: E402

LORA = LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))


def _rows(tokenizer, n: int, seq: int) -> TokenDataset:
    topics = demo_corpus()
    data = blocks_from_texts([topics[k] for k in sorted(topics)], tokenizer, seq)
    return TokenDataset(data.input_ids[:n], data.attention_mask[:n], data.labels[:n])


def bench_model(name: str, model_dir: Path, *, batch: int, seq: int, steps: int, ranks: int) -> list[dict]:
    cores = cpu_cores()
    settings = ModelSettings(device="cpu", dtype="fp32", processes=ranks)
    plan = plan_for_checkpoint(model_dir, settings, LORA, logical_batch=batch, seq_len=seq)
    loaded, _ = load_for_training(model_dir, settings, LORA, plan, CapacitySettings(), "")
    model, loss = loaded.model, SequenceLoss(loaded.model, loaded.kind)
    data = _rows(loaded.tokenizer, batch, seq)
    # q = batch / N = 1: every step is the whole fixed batch (the same rows for every setting)
    training = LocalTrainingSettings(batch_size=batch, steps=steps, max_seq_len=seq, clip_norm=1.0,
                                     learning_rate=0.01, clipping="hooks", secure_mode=True)
    start, layout = adapter_to_vector(model)
    group = RankGroup(rank_layout(settings, batch, threads=cores), model_dir=model_dir, model=settings, lora=LORA,
                      plan=plan, capacity=CapacitySettings(), layout_json=adapter_layout(model).to_json())
    t0 = time.perf_counter()
    group.start()
    start_s = time.perf_counter() - t0
    setups = [("1 rank", 1, 1), ("1 rank", 1, cores), (f"{ranks} ranks", ranks, max(1, cores // ranks))]
    times: dict[tuple[int, int], list[float]] = {(r, t): [] for _, r, t in setups}
    try:
        for _ in range(2):  # interleaved rounds, so that load on the machine hits every setting alike
            for _, r, t in setups:
                load_adapter_vector(model, start, layout)
                step_times: list[float] = []
                last = [time.perf_counter()]

                def tick(i, n, _loss, step_times=step_times, last=last):
                    now = time.perf_counter()
                    step_times.append(now - last[0])
                    last[0] = now

                torch.set_num_threads(t)
                last[0] = time.perf_counter()
                if r == 1:
                    train_local(model, data, training, 1.0, loss=loss, progress=tick)
                else:
                    group.train(model, data, training, 1.0, attempt=1, loss=loss, progress=tick)
                times[(r, t)] += step_times[1:] or step_times  # the first step warms caches up
    finally:
        group.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = batch * seq / med[(1, cores)]
    single = batch * seq / med[(1, 1)]
    out = []
    for _label, r, t in setups:
        tps = batch * seq / med[(r, t)]
        out.append({"kind": "ranks", "model": name, "ranks": r, "threads_per_rank": t, "batch": batch, "seq": seq,
                    "steps": len(times[(r, t)]), "step_s": round(med[(r, t)], 4), "tokens_per_s": round(tps, 1),
                    "start_s": round(start_s, 2) if r > 1 else None,
                    "vs_one_rank_all_threads": round(tps / base, 3), "vs_one_rank_one_thread": round(tps / single, 3),
                    "cores": cores})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON array")
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--real-model", type=Path, default=None, help="a checkpoint directory (e.g. SmolLM2-135M-Instruct)")
    args = ap.parse_args()
    from securefed.federation import ensure_tiny_model

    steps = args.steps or (3 if args.quick else 6)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ensure_tiny_model(Path(tmp) / "tiny")
        records += bench_model("tiny", tiny, batch=16, seq=64, steps=steps, ranks=args.ranks)
    if args.real_model is not None:
        records += bench_model(args.real_model.name, args.real_model, batch=8, seq=128, steps=max(2, steps // 2),
                               ranks=args.ranks)
    print(json.dumps(records, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
