"""Load a causal LM and its tokenizer from a local directory and attach a LoRA adapter.

Any Hugging Face checkpoint directory works (the tiny preset is saved the same way). Nothing is ever
downloaded: the hub is switched offline before transformers is imported and every call passes
``local_files_only=True``.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Set before transformers/huggingface_hub are imported, which read them then; harmless if they already
# were (local_files_only is passed explicitly as well).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from securefed.errors import ModelError
from securefed.training.adapter import adapter_layout
from securefed.training.config import LoraSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM (with LoRA attached when requested), its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    model_dir: Path
    lora: LoraSettings | None


def load_tokenizer(model_dir: str | Path):
    model_dir = Path(model_dir)
    _check_dir(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError/JSON errors
        raise ModelError(
            f"{model_dir}: cannot load the tokenizer ({exc.__class__.__name__}); the directory needs "
            "tokenizer.json/tokenizer_config.json saved with save_pretrained"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"{model_dir}: tokenizer has neither a pad nor an eos token; add a pad_token")
        tok.pad_token = tok.eos_token
    return tok


def _check_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found; set the base model path to a local checkpoint")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; point the base model path at a save_pretrained directory")


def load_model(model_dir: str | Path, lora: LoraSettings | None = None) -> LoadedModel:
    """Load model + tokenizer (float32, offline); attach LoRA from ``lora`` if given.

    The LoRA A matrices are initialised from ``lora.init_seed`` (public), so every party that loads the
    same base model with the same settings gets the same initial adapter.
    """
    hf_logging.disable_progress_bar()

    model_dir = Path(model_dir)
    _check_dir(model_dir)
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise ModelError(f"{model_dir}/config.json: cannot parse model config ({exc.__class__.__name__})") from None
    tokenizer = load_tokenizer(model_dir)
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelError(
            f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}; "
            "use the tokenizer saved with this model"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(
            f"{model_dir}: cannot load model weights ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); "
            "check the weight files are complete"
        ) from None
    emb = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > emb:
        raise ModelError(
            f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the embedding has {emb} rows; "
            "use the tokenizer saved with this model"
        )
    # The pad token is only used with attention_mask=0 and label -100, but it must exist in the model.
    model.config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        model = attach_lora(model, lora)
    return LoadedModel(model=model, tokenizer=tokenizer, model_dir=model_dir, lora=lora)


def attach_lora(model, lora: LoraSettings):
    """Wrap ``model`` with a peft LoRA adapter; only the adapter stays trainable."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ModelError(
            f"LoRA target_modules {missing} not found in the model; choose from the model's linear layers "
            f"(e.g. {sorted(n for n in names if n.endswith('proj'))[:8]})"
        )
    cfg = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # fork_rng keeps the caller's global RNG untouched; the seed is public (the initial adapter is not secret).
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecation noise inside peft
        torch.manual_seed(lora.init_seed)  # not secret
        peft_model = get_peft_model(model, cfg)
    return peft_model


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layout_for_config(config, lora: LoraSettings):
    """The adapter layout for a model config *without loading weights* (built on torch's meta device).

    ``config`` is a transformers ``PretrainedConfig`` or a local model directory. Lets a server that holds no
    model weights compute the adapter length and layout hash, and the benchmark size a 7B-shaped adapter.
    """
    if isinstance(config, (str, Path)):
        model_dir = Path(config)
        _check_dir(model_dir)
        try:
            config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"{model_dir}/config.json: cannot parse model config ({exc.__class__.__name__})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = attach_lora(model, lora)
    return adapter_layout(model)
