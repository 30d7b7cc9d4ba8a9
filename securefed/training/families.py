"""What differs between model families, found by inspecting the loaded model rather than by name lists.

* **Kind**: a decoder-only causal LM, or an encoder-decoder (T5, Flan-T5, BART) trained as seq2seq.
* **LoRA targets**: ``"auto"`` picks the attention query and value projections of the architecture
  in front of us - the linear children of its attention modules, by the names the families use
  (``q_proj``/``v_proj``, T5's ``q``/``v``, ``query``/``value``), or the fused projection that holds
  both (GPT-2's ``c_attn``, GPT-NeoX/BLOOM/Falcon's ``query_key_value``, Phi-3's ``qkv_proj``, MPT's
  ``Wqkv``); ``"all-linear"`` is PEFT's (every linear layer but the output head); an explicit list
  matches module names or dotted suffixes the way PEFT does, and a name that matches no linear module
  is refused with the model's real linear module names.
"""

from __future__ import annotations

import enum
import logging

import torch
from transformers.pytorch_utils import Conv1D

from securefed.errors import ModelError
from securefed.training import hf_tying  # noqa: F401  (thread-safe weight tying, installed on import)

log = logging.getLogger(__name__)


class ModelKind(str, enum.Enum):
    CAUSAL = "causal"  # decoder-only: next-token loss on the sequence
    SEQ2SEQ = "seq2seq"  # encoder-decoder: loss on the decoder's target given the encoder's input


def model_kind(config) -> ModelKind:
    return ModelKind.SEQ2SEQ if getattr(config, "is_encoder_decoder", False) else ModelKind.CAUSAL


# Query/value names in the order families use them; a pair is chosen only when both exist as linear
# children of the same attention modules.
_QV_PAIRS = (("q_proj", "v_proj"), ("q", "v"), ("query", "value"), ("query_proj", "value_proj"), ("Wq", "Wv"))
# Fused projections that compute q, k and v in one matmul: LoRA on it adapts q and v (and k).
_FUSED = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack", "qkv")


def is_linear(module) -> bool:
    """nn.Linear and its subclasses (bitsandbytes' Linear4bit/Linear8bitLt) and GPT-2's Conv1D."""
    return isinstance(module, (torch.nn.Linear, Conv1D))


def _output_head(model):
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


def linear_names(model) -> dict[str, list[str]]:
    """Leaf name -> full module names of every linear layer except the output head."""
    head = _output_head(model)
    out: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        if name and mod is not head and is_linear(mod):
            out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return out


def _attention_children(model) -> dict[str, int]:
    """Leaf name -> count of linear direct children of modules whose class is an attention block."""
    found: dict[str, int] = {}
    for _, mod in model.named_modules():
        if "attention" not in type(mod).__name__.lower():
            continue
        for child_name, child in mod.named_children():
            if is_linear(child):
                found[child_name] = found.get(child_name, 0) + 1
    return found


def auto_targets(model) -> tuple[str, ...]:
    """The attention query/value projections of ``model`` (see the module docstring)."""
    attn = _attention_children(model)
    for q, v in _QV_PAIRS:
        if q in attn and v in attn:
            return (q, v)
    for fused in _FUSED:
        if fused in attn:
            return (fused,)
    raise ModelError(
        f"target_modules = \"auto\": found no attention query/value projection in {type(model).__name__}; set "
        f"lora.target_modules to some of its linear modules: {sorted(linear_names(model))[:24]}"
    )


def _matches(target: str, full_names: list[str]) -> bool:
    # PEFT's rule for a list entry: the module's name is the target or ends with "." + target.
    return any(n == target or n.endswith("." + target) for n in full_names)


def resolve_targets(model, target_modules) -> list[str] | str:
    """What to pass to PEFT's ``LoraConfig.target_modules`` for ``model``; logs what was chosen."""
    linears = linear_names(model)
    if target_modules == "all-linear":
        log.info("LoRA targets (all-linear): %s", ", ".join(sorted(linears)))
        return "all-linear"
    if target_modules == "auto":
        chosen = auto_targets(model)
        n = sum(len(linears.get(t, [])) for t in chosen)
        log.info("LoRA targets (auto, %s): %s on %d modules", type(model).__name__, ", ".join(chosen), n)
        return list(chosen)
    every = [n for names in linears.values() for n in names]
    missing = [t for t in target_modules if not _matches(t, every)]
    if missing:
        raise ModelError(
            f"LoRA target_modules {missing} match no linear module of {type(model).__name__}; its linear modules "
            f"are {sorted(linears)} (a name, or a dotted suffix such as 'self_attn.{sorted(linears)[0]}'), or use "
            "\"auto\" / \"all-linear\""
        )
    return list(target_modules)


def peft_task_type(kind: ModelKind) -> str:
    return "SEQ_2_SEQ_LM" if kind is ModelKind.SEQ2SEQ else "CAUSAL_LM"
