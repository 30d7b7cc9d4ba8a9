"""Local training: model loading (any causal or seq2seq HF family), LoRA adapter vectors, data, the
base-model fingerprint, memory planning, and DP-SGD (Opacus).

Heavy dependencies (torch, transformers, peft, opacus) load only when a name that needs them is used.

Public API::

    from securefed.training import (
        LoraSettings, LocalTrainingSettings, ClippingMode, ModelSettings,  # config
        load_model, LoadedModel,                                    # model + tokenizer (+ LoRA)
        build_tiny_model,                                           # built-in preset
        AdapterLayout, adapter_to_vector, load_adapter_vector,      # flat adapter vectors
        TokenDataset, load_jsonl, split_demo_corpus,                # data
        demo_client_dataset, demo_heldout_dataset, evaluate,
        train_local, plan_steps, LocalTrainResult, GradientCorrection,  # DP-SGD
        base_fingerprint, compute_fingerprint,                      # one verified base model
        plan_memory, MemoryPlan, SequenceLoss, ModelKind,           # memory, loss, families
    )
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LoraSettings": "config",
    "LocalTrainingSettings": "config",
    "ClippingMode": "config",
    "ModelSettings": "config",
    "base_fingerprint": "fingerprint",
    "compute_fingerprint": "fingerprint",
    "plan_memory": "memory",
    "MemoryPlan": "memory",
    "SequenceLoss": "loss",
    "ModelKind": "families",
    "initial_vector": "adapter",
    "load_model": "model",
    "load_tokenizer": "model",
    "LoadedModel": "model",
    "count_trainable": "model",
    "layout_for_config": "model",
    "build_tiny_model": "preset",
    "PresetSize": "preset",
    "AdapterLayout": "adapter",
    "adapter_to_vector": "adapter",
    "load_adapter_vector": "adapter",
    "adapter_layout": "adapter",
    "TokenDataset": "data",
    "load_jsonl": "data",
    "blocks_from_texts": "data",
    "split_demo_corpus": "data",
    "DemoSplit": "data",
    "demo_client_dataset": "data",
    "demo_heldout_dataset": "data",
    "evaluate": "data",
    "train_local": "dp",
    "plan_steps": "dp",
    "LocalTrainResult": "dp",
    "GradientCorrection": "dp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'securefed.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"securefed.training.{mod}"), name)
