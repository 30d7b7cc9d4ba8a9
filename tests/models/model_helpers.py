"""Tiny Llama checkpoints (random weights, the preset's byte-level tokenizer with a ChatML template) and
global adapter bundles as a federation writes them, for the export and GGUF tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from securefed.protocol.bundle import write_adapter_file
from securefed.training.adapter import adapter_to_vector
from securefed.training.config import LoraSettings
from securefed.training.fingerprint import compute_fingerprint
from securefed.training.model import load_model
from securefed.training.preset import train_tokenizer

CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def build_tiny_llama(directory: Path, *, tied: bool = True, seed: int = 7) -> Path:
    """Hidden 32, 2 layers, 4 query heads over 2 key/value heads (GQA, like SmolLM2), optionally tied head."""
    tok = train_tokenizer(512)
    tok.chat_template = CHATML
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # not secret: public test weights
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def write_bundle(model_dir: Path, path: Path, *, lora: LoraSettings | None = None, seed: int = 0,
                 fingerprint: str | None = None) -> Path:
    """A global adapter file as the coordinator writes it, with a non-trivial adapter (every B non-zero)."""
    lora = lora or LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    loaded = load_model(model_dir, lora=lora)
    vec, layout = adapter_to_vector(loaded.model)
    rng = np.random.default_rng(seed)  # not secret: a test adapter
    vec = (vec + rng.normal(0.0, 0.2, vec.shape)).astype(np.float32)
    settings = json.dumps({"lora": lora.model_dump(mode="json"), "strategy": {},
                           "base_model": {"fingerprint": fingerprint or compute_fingerprint(model_dir)}},
                          sort_keys=True, separators=(",", ":"))
    write_adapter_file(path, vec, layout.to_json(), {"round": "2"}, settings_json=settings)
    return path
