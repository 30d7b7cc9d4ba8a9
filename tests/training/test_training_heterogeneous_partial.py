"""A partial member on the real training path (tiny model, Opacus): it trains exactly its groups, its
rank mask applies before clipping, and the layers below its lowest trained one record no graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_training_dp import _per_sample_grads

from securefed.heterogeneous.groups import ParameterGroups
from securefed.heterogeneous.partial import Capacity, PartialAdapter
from securefed.training.adapter import adapter_layout, adapter_to_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import DPTrainer, enable_gradient_checkpointing
from securefed.training.model import load_model
from securefed.training.preset import build_tiny_model
from securefed.training.rng import TorchSource

LORA = LoraSettings(rank=4, alpha=8, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_het"), "tiny", pretrain=False)


@pytest.fixture()
def lm(tiny_dir):
    m = load_model(tiny_dir, LORA)
    vec, layout = adapter_to_vector(m.model)
    g = torch.Generator().manual_seed(3)  # not secret: a non-zero B so that A gets gradients too
    load_adapter_vector(m.model, (torch.randn(vec.shape, generator=g) * 0.1).numpy().astype(np.float32), layout)
    return m


@pytest.fixture(scope="module")
def batch(tiny_dir):
    topics = demo_corpus()
    data = blocks_from_texts([topics[k] for k in sorted(topics)[:4]], load_model(tiny_dir).tokenizer, 32)
    return data.batch([0, 2, 5, 7])


def test_heterogeneous_partial_member_clips_and_trains_only_its_groups(lm, batch):
    model = lm.model
    layout = adapter_layout(model)
    whole_start, _ = adapter_to_vector(model)
    part = PartialAdapter(model, layout, Capacity(top_layers=1, rank=2))
    assert part.local.total_size < layout.total_size  # the lower layer is frozen
    masks = part.grad_masks()
    flat_mask = torch.cat([m.expand_as(p).reshape(-1) for m, p in
                           zip(masks, [p for p in model.parameters() if p.requires_grad])])
    start, _ = adapter_to_vector(model)
    g = _per_sample_grads(model, batch) * flat_mask  # reference: the trained coordinates' gradients
    clip = float(g.norm(dim=1).min()) / 2  # binds for every example, on the masked norms
    clipped = g * torch.clamp(clip / (g.norm(dim=1) + 1e-6), max=1.0)[:, None]
    expected = start - 0.1 * clipped.sum(0).numpy() / 4
    settings = LocalTrainingSettings(learning_rate=0.1, batch_size=4, steps=1, clip_norm=clip, secure_mode=False,
                                     max_seq_len=32)
    trainer = DPTrainer(model, settings, 0.0, 4, ClippingMode.HOOKS, TorchSource(), grad_mask=masks)
    try:
        trainer.step(batch)
    finally:
        trainer.close()
    got, _ = adapter_to_vector(model)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    whole = part.embed(got - start)
    moved = ParameterGroups.from_layout(layout.names, layout.shapes).element_group[whole != 0]
    assert set(np.unique(moved)) <= set(np.flatnonzero(part.indicator))  # nothing outside its groups moved
    assert len(set(np.unique(moved))) == int(part.indicator.sum())  # and every group it trains did
    whole_now = np.concatenate([p.detach().reshape(-1).numpy() for n, p in model.named_parameters() if ".lora_" in n])
    lower = np.array([not n.startswith(part.groups.layers[-1]) for n in layout.names])
    sizes = np.array(layout.sizes)
    lower_elems = np.repeat(lower, sizes)
    assert np.array_equal(whole_now[lower_elems], whole_start[lower_elems])
    # negative control: the same step without the mask moves the untrained slots and clips differently
    load_adapter_vector(model, start, part.local)
    trainer = DPTrainer(model, settings, 0.0, 4, ClippingMode.HOOKS, TorchSource())
    try:
        trainer.step(batch)
    finally:
        trainer.close()
    unmasked, _ = adapter_to_vector(model)
    untrained = flat_mask.numpy() == 0
    assert np.abs(unmasked - start)[untrained].max() > 1e-6
    assert np.abs(unmasked - expected)[~untrained].max() > 1e-6


def _frozen_layer_records_graph(model, layer_index: int, batch) -> bool:
    seen = []
    layer = model.get_base_model().model.layers[layer_index]
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad))
    try:
        model(input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1])
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_heterogeneous_layers_below_the_trained_ones_keep_no_graph(tiny_dir, batch, checkpointing):
    """What saves the memory: the frozen lower layer's output needs no gradient, so autograd keeps none
    of its activations; with the whole adapter (negative control) it does."""
    whole = load_model(tiny_dir, LORA).model
    part_model = load_model(tiny_dir, LORA).model
    if checkpointing:  # checkpointing marks the embeddings' output as needing a gradient: undone for a partial member
        enable_gradient_checkpointing(whole)
        enable_gradient_checkpointing(part_model)
    whole.train()
    part_model.train()
    PartialAdapter(part_model, adapter_layout(part_model), Capacity(top_layers=1))
    assert _frozen_layer_records_graph(whole, 0, batch) is True
    assert _frozen_layer_records_graph(part_model, 0, batch) is False
