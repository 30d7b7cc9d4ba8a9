"""The real model on the real task, end to end (slow: ~1-2 minutes of CPU): SmolLM2 converted by
`securefed model get`, a member's ICD-10-CM chat records, a few DP-SGD steps through `train_local`
with Adam, the adapter written as the global adapter file, and `securefed eval` on codes no member
trains on: the answer tokens' perplexity falls, the generations are deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from securefed.cli import main
from securefed.data.records import parse_record
from securefed.protocol.bundle import write_adapter_file
from securefed.tasks import icd10
from securefed.training.adapter import adapter_to_vector
from securefed.training.config import LocalTrainingSettings, LoraSettings
from securefed.training.data import examples_from_records
from securefed.training.dp import train_local
from securefed.training.fingerprint import compute_fingerprint
from securefed.training.model import load_model

pytestmark = pytest.mark.slow


def test_dp_lora_on_icd10_lowers_the_answer_perplexity_of_held_out_codes(tmp_path, capsys, smollm2_checkpoint):
    model_dir = smollm2_checkpoint  # converted by `securefed model get`, once per run
    split = icd10.split_items(icd10.tabular_items(), 3, max_per_chapter=40)
    train = [parse_record(r, f"train:{i}") for i, r in enumerate(icd10.records(split.members[0].train))]
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in icd10.records(split.heldout[:12])))
    lora = LoraSettings(rank=4, alpha=8, target_modules=tuple(f"layers.{i}.self_attn.{m}" for i in (28, 29)
                                                               for m in ("q_proj", "v_proj")))
    lm = load_model(model_dir, lora)
    data = examples_from_records(train, lm.tokenizer, 80, kind=lm.kind)
    assert data.stats.truncated == 0 and len(data.dataset) == len(train)
    torch.manual_seed(0)  # not secret: the test's sampling and noise
    settings = LocalTrainingSettings(optimizer="adam", learning_rate=0.01, batch_size=16, steps=4, max_seq_len=80,
                                     clip_norm=1.0, clipping="hooks", secure_mode=False)
    result = train_local(lm.model, data.dataset, settings, 0.5, physical_batch_size=16)
    assert result.steps == 4 and result.noise_multiplier == 0.5
    vec, layout = adapter_to_vector(lm.model)
    adapter = tmp_path / "final_adapter.safetensors"
    write_adapter_file(adapter, vec.astype(np.float32), layout.to_json(), settings_json=json.dumps(
        {"lora": lora.model_dump(mode="json"), "base_model": {"fingerprint": compute_fingerprint(model_dir)}}))
    args = ["eval", "--model", str(model_dir), "--data", str(held), "--max-new-tokens", "10", "--json"]
    out = []
    for extra in ([], ["--adapter", str(adapter)], ["--adapter", str(adapter)]):
        assert main([*args, *extra]) == 0
        out.append(json.loads(capsys.readouterr().out))
    base, tuned, again = out
    assert base["metric"] == tuned["metric"] == "exact_match" and base["records"] == 12
    assert tuned["perplexity"] < base["perplexity"]  # the answers (codes) became likelier
    assert again["samples"] == tuned["samples"] and again["loss"] == tuned["loss"]  # deterministic
