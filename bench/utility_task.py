"""The real-model half of ``bench/utility.py``: the ICD-10-CM task on a checkpoint, every setting through
the members' real training and aggregation code (see that file's docstring for the settings)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from securefed.data.records import parse_record, read_jsonl
from securefed.evaluation.task import evaluate_records
from securefed.privacy.budget import calibrate_noise
from securefed.secagg.params import suggest_params
from securefed.secagg.simulation import simulate_round
from securefed.strategies import StrategySettings, make_strategy
from securefed.tasks import icd10
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import LocalTrainingSettings, LoraSettings
from securefed.training.data import TokenDataset, examples_from_records
from securefed.training.dp import plan_steps, train_local
from securefed.training.loss import SequenceLoss
from securefed.training.model import load_model


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Task:
    members: list[list]  # each member's training records
    heldout: list  # the global held-out records (no member trains on them)


def load_task(args) -> Task:
    if args.data is not None:
        manifest = json.loads((args.data / "task.json").read_text())
        members = [read_jsonl(args.data / m["train"]) for m in manifest["members"]]
        return Task(members, read_jsonl(args.data / manifest["heldout"]["path"]))
    items = icd10.tabular_items()
    split = icd10.split_items(items, 3, max_per_chapter=args.max_per_chapter)
    pool = icd10.chapter_codes(items)

    def as_records(its, name, k=0):
        return [parse_record(r, f"{name}:{i + 1}") for i, r in enumerate(icd10.records(its, pool=pool, k=k))]

    return Task([as_records(m.train, m.name) for m in split.members],
                as_records(split.heldout, "heldout", args.options))


def _targets(model_dir, layers: int):
    if layers <= 0:
        return ("q_proj", "v_proj")
    n = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    return tuple(f"layers.{i}.self_attn.{m}" for i in range(max(0, n - layers), n) for m in ("q_proj", "v_proj"))


def _concat(parts: list[TokenDataset]) -> TokenDataset:
    return TokenDataset(*(torch.cat([getattr(p, k) for p in parts]) for k in ("input_ids", "attention_mask", "labels")))


class Runner:
    def __init__(self, args) -> None:
        self.args = args
        self.model_dir = Path(args.model)
        quick = args.quick
        self.rounds = args.rounds or (1 if quick else 2)
        self.steps = args.steps or (2 if quick else 3)
        self.batch = args.batch or (32 if quick else 64)
        self.eval_n = args.eval_records or (32 if quick else 64)
        self.task = load_task(args)
        self.models: dict[bool, object] = {}
        self.base_eval: dict | None = None

    # -- model, data ----------------------------------------------------------------------------------
    def model(self, ffa: bool):
        if ffa not in self.models:
            a = self.args
            lora = LoraSettings(rank=a.rank, alpha=a.alpha, target_modules=_targets(self.model_dir, a.lora_layers),
                                freeze_a=ffa)
            lm = load_model(self.model_dir, lora)
            vec, layout = adapter_to_vector(lm.model)
            self.models[ffa] = (lm, SequenceLoss(lm.model, lm.kind), vec, layout)
            if not hasattr(self, "data"):
                self.data = [examples_from_records(m, lm.tokenizer, a.max_seq_len, kind=lm.kind).dataset
                             for m in self.task.members]
                self.held = self.task.heldout[: self.eval_n]
                _say(f"members' training records: {[len(d) for d in self.data]}; global held-out evaluated: "
                     f"{len(self.held)} of {len(self.task.heldout)}; adapter {layout.total_size} parameters")
        return self.models[ffa]

    def settings(self, batch: int, dp: bool) -> LocalTrainingSettings:
        a = self.args
        return LocalTrainingSettings(learning_rate=a.lr, optimizer=a.optimizer, batch_size=batch, steps=self.steps,
                                     max_seq_len=a.max_seq_len, clip_norm=a.clip if dp else 1e6, clipping="hooks",
                                     secure_mode=False)

    def evaluate(self, ffa: bool, vec) -> dict:
        lm, loss, _, layout = self.model(ffa)
        load_adapter_vector(lm.model, vec, layout)
        r = evaluate_records(lm.model, lm.tokenizer, self.held, kind=lm.kind, max_seq_len=self.args.max_seq_len,
                             max_new_tokens=self.args.max_new_tokens, batch_size=16, metric=self.args.metric)
        return {"ppl": r.perplexity, "metric": r.metric, "value": r.task_metric, "metrics": r.metrics,
                "samples": r.samples[:3]}

    # -- training -------------------------------------------------------------------------------------
    def _train(self, ffa: bool, vec, data: TokenDataset, settings: LocalTrainingSettings, sigma: float):
        lm, loss, _, layout = self.model(ffa)
        load_adapter_vector(lm.model, vec, layout)
        return train_local(lm.model, data, settings, sigma, physical_batch_size=self.args.physical, loss=loss)

    def _aggregate(self, payloads: list[np.ndarray], bound: float) -> np.ndarray:
        if self.args.secagg == "off":
            return np.sum(payloads, axis=0)
        params = suggest_params(len(payloads), frac_bits=24, clip=bound, sparse=False)
        out = simulate_round({i + 1: p for i, p in enumerate(payloads)}, params)
        return np.asarray(out.result.values, dtype=np.float64)

    def federated(self, epsilon: float | None, ffa: bool, clip: bool = False) -> dict:
        _, _, vec0, layout = self.model(ffa)
        settings = self.settings(self.batch, epsilon is not None or clip)
        sigmas = []
        for d in self.data:
            q, steps = plan_steps(settings, len(d))
            if epsilon is not None and not self.args.delta < 1 / len(d):
                raise SystemExit(f"--delta {self.args.delta} is not below 1/N = {1 / len(d):.3g}")
            sigmas.append(0.0 if epsilon is None else
                          calibrate_noise(epsilon, self.args.delta, q, steps * self.rounds, "rdp"))
        strategy = make_strategy(StrategySettings(kind="fedavg", max_samples=max(map(len, self.data)),
                                                  delta_bound=1.0), dim=layout.total_size)
        vec = vec0
        for r in range(self.rounds):
            payloads = [strategy.client_payload(self._train(ffa, vec, d, settings, s)).vector
                        for d, s in zip(self.data, sigmas)]
            vec = strategy.server_apply(vec, self._aggregate(payloads, strategy.payload_bound()), len(payloads)).global_vec
            _say(f"  round {r + 1}/{self.rounds} done")
        return {"vec": vec, "noise_multipliers": [round(s, 4) for s in sigmas]}

    def alone(self, data: TokenDataset, batch: int) -> np.ndarray:
        _, _, vec, _ = self.model(False)
        settings = self.settings(batch, False)
        for _ in range(self.rounds):  # the same rounds of the same local steps as a federated member
            vec = vec + self._train(False, vec, data, settings, 0.0).delta
        return vec

    # -- settings ---------------------------------------------------------------------------------------
    def record(self, setting: str, epsilon, t0: float, after: dict, **extra) -> dict:
        before = self.base_eval
        return {"model": self.model_dir.name, "task": "icd10", "setting": setting, "epsilon": epsilon,
                "delta": None if epsilon is None else self.args.delta, "rounds": self.rounds, "steps": self.steps,
                "batch": extra.pop("batch", self.batch), "members": len(self.data),
                "heldout_ppl_before": round(before["ppl"], 4), "heldout_ppl_after": round(after["ppl"], 4),
                "task_metric": before["metric"], "task_metric_before": before["value"],
                "task_metric_after": after["value"], "metrics_before": before["metrics"],
                "metrics_after": after["metrics"],
                "lora": "ffa-lora" if setting.startswith("fed-ffa") else "lora", "rank": self.args.rank,
                "lora_layers": self.args.lora_layers, "optimizer": self.args.optimizer, "lr": self.args.lr,
                "clip": self.args.clip, "max_seq_len": self.args.max_seq_len, "eval_records": len(self.held),
                "secagg": self.args.secagg == "on", "samples": after.get("samples"), **extra,
                "seconds": round(time.perf_counter() - t0, 1)}

    def run(self, setting: str) -> dict:
        t0 = time.perf_counter()
        torch.manual_seed(self.args.seed)  # not secret: the same sampling and noise stream in every setting
        if setting == "base":
            return self.record("base", None, t0, self.base_eval, rounds=0, steps=0, batch=0)
        if setting == "local-only":
            each = [self.evaluate(False, self.alone(d, self.batch)) for d in self.data]
            best = max(range(len(each)), key=lambda i: (each[i]["value"], -each[i]["ppl"]))
            mean = {"ppl": float(np.mean([e["ppl"] for e in each])), "value": float(np.mean([e["value"] for e in each])),
                    "metric": each[0]["metric"], "samples": each[best]["samples"],
                    "metrics": {k: float(np.mean([e["metrics"][k] for e in each])) for k in each[0]["metrics"]}}
            return self.record("local-only", None, t0, mean, best_member={
                "member": best + 1, "task_metric_after": each[best]["value"], "heldout_ppl_after": each[best]["ppl"]},
                member_results=[{"member": i + 1, "task_metric_after": e["value"], "heldout_ppl_after": e["ppl"],
                                 "metrics_after": e["metrics"]} for i, e in enumerate(each)])
        if setting == "centralised":
            vec = self.alone(_concat(self.data), self.batch * len(self.data))
            return self.record("centralised", None, t0, self.evaluate(False, vec), batch=self.batch * len(self.data))
        if setting == "fed-clip":  # non-private but clipped: what clipping alone does, without noise
            fed = self.federated(None, False, clip=True)
            return self.record(setting, None, t0, self.evaluate(False, fed["vec"]), noise_multipliers=fed["noise_multipliers"])
        kind, _, eps = setting.partition("-")[2].partition("-") if setting != "federated" else ("", "", "")
        epsilon = float(eps) if eps else None
        ffa = kind == "ffa"
        fed = self.federated(epsilon, ffa)
        return self.record(setting, epsilon, t0, self.evaluate(ffa, fed["vec"]),
                           noise_multipliers=fed["noise_multipliers"])


def run_real(args, chosen: list[str]) -> list[dict]:
    r = Runner(args)
    _say(f"model {args.model}: rounds {r.rounds} x {r.steps} local steps of ~{r.batch} records, LoRA r={args.rank} "
         f"on q/v of the top {args.lora_layers or 'all'} layers, {args.optimizer} lr {args.lr}, C={args.clip}")
    t0 = time.perf_counter()
    r.base_eval = r.evaluate(False, r.model(False)[2])
    _say(f"base: {r.base_eval['metric']} {r.base_eval['value']:.4f}, perplexity {r.base_eval['ppl']:.3f} "
         f"({time.perf_counter() - t0:.0f} s)")
    records = []
    for setting in chosen:
        rec = r.run(setting)
        records.append(rec)
        _say(f"{setting}: {rec['task_metric']} {rec['task_metric_before']:.4f} -> {rec['task_metric_after']:.4f}, "
             f"perplexity {rec['heldout_ppl_before']:.3f} -> {rec['heldout_ppl_after']:.3f} ({rec['seconds']:.0f} s)")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    fed = next((x for x in records if x["setting"] == "federated"), None)
    for x in records:
        # The share of the federated non-private gain each setting keeps, on every metric measured.
        x["kept"] = {}
        for name, after in x["metrics_after"].items():
            gain = fed["metrics_after"].get(name, 0) - fed["metrics_before"].get(name, 0) if fed else 0
            if gain > 0 and name in x["metrics_before"]:
                x["kept"][name] = round((after - x["metrics_before"][name]) / gain, 3)
        ppl_gain = fed["heldout_ppl_before"] - fed["heldout_ppl_after"] if fed else 0
        if ppl_gain > 0:
            x["kept"]["perplexity"] = round((x["heldout_ppl_before"] - x["heldout_ppl_after"]) / ppl_gain, 3)
        if not (isinstance(x["heldout_ppl_after"], float) and math.isfinite(x["heldout_ppl_after"])):
            x["heldout_ppl_after"] = None
    return records
