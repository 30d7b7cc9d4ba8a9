"""The adapter merged into the base weights (``merge_and_unload``): a plain transformers checkpoint that
serves without PEFT, in the base checkpoint's dtype, with its tokenizer and generation config."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from securefed.export.federated import FederatedModel
from securefed.fsutil import share_tree
from securefed.training.model import checkpoint_dtype

_TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def merge(fed: FederatedModel):
    """The plain base model with the adapter merged in (in place: ``fed``'s PEFT wrapper is spent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fed.model.merge_and_unload()
    model.config.use_cache = True  # a served model generates: keep its KV cache
    return model.eval()


def save_merged(model, tokenizer, base_model_dir: Path, out_dir: Path) -> Path:
    """Save ``model`` in the base checkpoint's dtype (merging ran in float32); ``model`` is left in that dtype,
    the weights every later format is written from."""
    dtype = _TORCH.get(checkpoint_dtype(model.config) or "fp32", torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.to(dtype).save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    gen = Path(base_model_dir) / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, Path(out_dir) / "generation_config.json")
    share_tree(Path(out_dir))
    return Path(out_dir)
