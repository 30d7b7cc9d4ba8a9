"""Task metrics the simulation reports after every round, next to held-out loss and perplexity.

A metric is a callable ``(model, tokenizer, heldout: TokenDataset, max_examples: int) -> dict[str, float]``
run on the global adapter. ``--metric`` names a built-in (``token-accuracy``) or ``package.module:function``
for a task's own metric (exact match of generated codes, ROUGE, ...), so a task plugs in without touching
the simulation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from securefed.errors import ConfigError
from securefed.training.data import TokenDataset
from securefed.training.families import ModelKind, model_kind
from securefed.training.loss import IGNORE_INDEX

MetricFn = Callable[..., dict[str, float]]


def token_accuracy(model, tokenizer, heldout: TokenDataset, max_examples: int, batch_size: int = 8) -> dict[str, float]:
    """Top-1 accuracy of the next token (causal) or of each decoder target (seq2seq) over labelled tokens."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seq2seq = model_kind(base.config) is ModelKind.SEQ2SEQ
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        with torch.no_grad():
            n = min(len(heldout), max_examples)
            for start in range(0, n, batch_size):
                b = {k: v.to(device) for k, v in heldout.batch(list(range(start, min(n, start + batch_size)))).items()}
                if seq2seq:
                    logits = model(**b).logits
                    targets = b["labels"]
                else:
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
                    targets = b["labels"][:, 1:]
                keep = targets != IGNORE_INDEX
                right += int(((logits.argmax(-1) == targets) & keep).sum())
                total += int(keep.sum())
    finally:
        model.train(was_training)
    return {"token_accuracy": right / total if total else float("nan")}


BUILTIN: dict[str, MetricFn] = {"token-accuracy": token_accuracy}


def resolve_metric(name: str | None) -> MetricFn | None:
    """The metric ``name`` stands for (None: no metric); ``ConfigError`` naming the choices otherwise."""
    if name is None:
        return None
    if name in BUILTIN:
        return BUILTIN[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"--metric {name!r}: use one of {sorted(BUILTIN)} or package.module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--metric {name!r}: cannot load it ({exc})") from None
    if not callable(fn):
        raise ConfigError(f"--metric {name!r} is not a function")
    return fn
