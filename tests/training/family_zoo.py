"""Tiny checkpoints of the real Hugging Face families, built from their configs with random weights and
saved with ``save_pretrained`` (with the preset's byte-level tokenizer), so tests load them through
the same path a member's real checkpoint takes."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

from securefed.training.preset import train_tokenizer

VOCAB = 512  # the preset tokenizer's
# Room above it: transformers 5 picks the tokenizer class from the model type (Qwen2Tokenizer, ...),
# which may add its family's special tokens to ours.
IDS = dict(vocab_size=VOCAB + 64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DEC = dict(num_hidden_layers=2, num_attention_heads=4)


def _configs():
    return {
        "llama": T.LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **DEC, **IDS),
        "qwen2": T.Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **DEC, **IDS),
        "mistral": T.MistralConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **DEC, **IDS),
        "gemma": T.GemmaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, head_dim=8, **DEC, **IDS),
        "phi3": T.Phi3Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **DEC, **IDS),
        "gpt2": T.GPT2Config(n_embd=32, n_layer=2, n_head=4, **IDS),
        "gpt_neox": T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **DEC, **IDS),
        "bloom": T.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **IDS),
        "falcon": T.FalconConfig(hidden_size=32, **DEC, **IDS),
        "opt": T.OPTConfig(hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, **DEC, **IDS),
        "t5": T.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, decoder_start_token_id=0, **IDS),
        "bart": T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                             decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                             decoder_start_token_id=2, forced_eos_token_id=2, **IDS),
    }


FAMILIES = tuple(_configs())
SEQ2SEQ = ("t5", "bart")
# What target_modules = "auto" must pick: the attention query/value projections (or the fused one).
AUTO_TARGETS = {
    "llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"), "phi3": ("qkv_proj",), "gpt2": ("c_attn",), "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",), "falcon": ("query_key_value",), "opt": ("q_proj", "v_proj"), "t5": ("q", "v"),
    "bart": ("q_proj", "v_proj"),
}


# Dropout off, so a DP step can be compared with a per-example reference (the same random mask
# cannot be replayed one example at a time); clipping does not depend on it.
NO_DROPOUT = {
    "gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "bart": dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
    "t5": dict(dropout_rate=0.0),
    "opt": dict(dropout=0.0, attention_dropout=0.0),
}


def family_config(name: str, *, dropout: bool = False):
    cfg = _configs()[name]
    if not dropout:
        for k, v in NO_DROPOUT.get(name, {}).items():
            setattr(cfg, k, v)
    return cfg


def model_class(config):
    return T.AutoModelForSeq2SeqLM if config.is_encoder_decoder else T.AutoModelForCausalLM


def build_family(name: str, directory: Path, *, seed: int = 0, tokenizer=None, bare: bool = False,
                 **save_kw) -> Path:
    """Random weights of family ``name`` (fixed seed) + the preset tokenizer, saved into ``directory``.
    ``bare``: save only the base model (``AutoModel``: no LM head), as a user mistakenly might."""
    cfg = family_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # not secret: test weights
        model = (T.AutoModel if bare else model_class(cfg)).from_config(cfg)
    directory = Path(directory)
    model.save_pretrained(str(directory), **save_kw)
    (tokenizer or train_tokenizer(VOCAB)).save_pretrained(str(directory))
    return directory
