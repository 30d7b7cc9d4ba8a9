"""What ``securefed demo`` measures before and after the federation, on the same held-out records with the
initial (round 0) adapter and with the final one: perplexity on the demo corpus (``pydoc`` topics no
member trains on), or, for a real task (``--task icd10``), ``securefed eval``'s measures on the task's
global held-out split (codes no member trains on): perplexity on the answer tokens and the task metric
from greedy generations with a fixed budget (exact match of the code, and of its category)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.data.records import read_jsonl
from securefed.evaluation.task import evaluate_records
from securefed.protocol.bundle import read_adapter_file
from securefed.server.config import load_server_config
from securefed.training.adapter import AdapterLayout, load_adapter_vector
from securefed.training.config import LoraSettings
from securefed.training.data import demo_heldout_dataset, evaluate
from securefed.training.model import LoadedModel, load_model

NEW_TOKENS = 12  # an ICD-10-CM code is at most 8 characters: a few tokens and the end of the turn


@dataclass(frozen=True)
class Measure:
    name: str
    before: float
    after: float | None  # None: no round completed


def _pydoc(loaded: LoadedModel, n_clients: int, n_eval: int) -> dict[str, float]:
    held = demo_heldout_dataset(loaded.tokenizer, n_clients, 32, kind=loaded.kind)
    _, ppl = evaluate(loaded.model, held, max_examples=n_eval, kind=loaded.kind)
    return {"held-out perplexity": ppl}


def _task(loaded: LoadedModel, records, seq_len: int) -> dict[str, float]:
    r = evaluate_records(loaded.model, loaded.tokenizer, records, kind=loaded.kind, max_seq_len=seq_len,
                         max_new_tokens=NEW_TOKENS, batch_size=16)
    out = {"held-out perplexity (answer tokens)": r.perplexity}
    out.update({k: r.metrics[k] for k in ("exact_match", "category_match", "prefix1_match") if k in r.metrics})
    return out


def evaluate_demo(server_toml: Path, model_dir: Path, final: Path | None, *, n_clients: int, seq_len: int,
                  task_heldout: Path | None = None, limit: int = 48) -> list[Measure]:
    """Each measure with the round-0 adapter and (when a round completed) the final one."""
    cfg = load_server_config(server_toml)
    b0 = read_adapter_file(cfg.checkpoint_dir / "global-r000000.safetensors")
    lora = LoraSettings.model_validate(json.loads(b0.settings_json)["lora"])
    loaded = load_model(model_dir, lora=lora)
    layout = AdapterLayout.from_json(b0.layout_json)
    # The tiny preset: 128 blocks in a second; a real model: 64, a minute or two on a shared CPU.
    n_eval = 128 if (Path(model_dir) / "securefed_preset.json").is_file() else 64
    records = read_jsonl(task_heldout)[:limit] if task_heldout is not None else None
    runs = []
    for bundle in [b0] + ([read_adapter_file(final)] if final is not None else []):
        load_adapter_vector(loaded.model, np.array(bundle.vector), layout)
        runs.append(_task(loaded, records, seq_len) if records is not None else _pydoc(loaded, n_clients, n_eval))
    return [Measure(k, v, runs[1][k] if len(runs) > 1 else None) for k, v in runs[0].items()]
