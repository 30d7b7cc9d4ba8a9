"""The optimizer steps on the privatised gradient (post-processing, accounting unchanged), and a logical
batch of hundreds of records through micro-batches is the same mechanism as one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefed.config import parse_model
from securefed.errors import ConfigError
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import DPTrainer, per_sample_loss, train_local
from securefed.training.model import load_model
from securefed.training.preset import build_tiny_model
from securefed.training.rng import TorchSource

LORA = LoraSettings(rank=2, alpha=4, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = build_tiny_model(tmp_path_factory.mktemp("tiny_opt"), "tiny", pretrain=False)
    lm = load_model(d, LORA)
    vec, layout = adapter_to_vector(lm.model)
    g = torch.Generator().manual_seed(3)  # not secret
    start = (torch.randn(vec.shape, generator=g) * 0.1).numpy().astype(np.float32)  # B != 0: A gets gradients
    topics = demo_corpus()
    data = blocks_from_texts([topics[k] for k in sorted(topics)[:12]], lm.tokenizer, 16)
    return lm, start, layout, data


def _clipped_mean(model, batch, clip):
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"][i:i + 1], attention_mask=batch["attention_mask"][i:i + 1]).logits
        per_sample_loss(logits, batch["labels"][i:i + 1]).sum().backward()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        rows.append(g * min(1.0, clip / (float(g.norm()) + 1e-6)))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows).sum(0) / batch["input_ids"].shape[0]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_steps_on_the_clipped_gradient(setup, name):
    lm, start, layout, data = setup
    model = lm.model
    batches = [data.batch([0, 2, 5, 7]), data.batch([1, 3, 8, 9])]
    clip = 1e-3  # binds for every example: the optimizer must see the clipped gradient, not the raw one
    settings = LocalTrainingSettings(learning_rate=0.01, optimizer=name, weight_decay=0.1 if name == "adamw" else 0.0,
                                     batch_size=4, steps=2, clip_norm=clip, clipping="hooks", secure_mode=False,
                                     max_seq_len=16)
    def by_hand(c: float) -> np.ndarray:
        """torch's own optimizer on the mean gradients clipped to ``c`` per example, computed by hand."""
        load_adapter_vector(model, start, layout)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.Adam(params, lr=0.01) if name == "adam" else
               torch.optim.AdamW(params, lr=0.01, weight_decay=0.1))
        for b in batches:
            g = _clipped_mean(model, b, c)
            at = 0
            for p in params:
                p.grad = g[at:at + p.numel()].view_as(p).clone()
                at += p.numel()
            opt.step()
        return adapter_to_vector(model)[0]

    expected = by_hand(clip)
    raw = by_hand(1e9)  # negative control: the same optimizer on the unclipped gradient lands elsewhere
    assert np.abs(raw - expected).max() > 1e-3
    load_adapter_vector(model, start, layout)
    trainer = DPTrainer(model, settings, 0.0, 4, ClippingMode.HOOKS, TorchSource())
    try:
        for b in batches:
            trainer.step(b)
    finally:
        trainer.close()
    got, _ = adapter_to_vector(model)
    assert np.abs(got - start).max() > 1e-4  # Adam moves every coordinate by ~lr, whatever the clip
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-6)


def test_hundreds_of_records_through_micro_batches_equal_one_pass(setup):
    lm, start, layout, data = setup
    model = lm.model
    assert len(data) >= 256
    batch = data.batch(list(range(256)))
    settings = LocalTrainingSettings(learning_rate=0.5, batch_size=256, steps=1, clip_norm=1e-3, clipping="hooks",
                                     secure_mode=False, max_seq_len=16)
    out = []
    for physical in (None, 32):  # one pass of 256 rows, or 8 micro-batches of 32
        load_adapter_vector(model, start, layout)
        trainer = DPTrainer(model, settings, 0.0, 256, ClippingMode.HOOKS, TorchSource(), physical_batch_size=physical)
        try:
            trainer.step(batch)
        finally:
            trainer.close()
        out.append(adapter_to_vector(model)[0])
    assert np.abs(out[0] - start).max() > 1e-6
    np.testing.assert_allclose(out[1], out[0], rtol=1e-4, atol=1e-8)


def test_train_local_reports_the_same_accounting_facts_for_every_optimizer(setup):
    lm, start, layout, data = setup
    facts = []
    for name, lr in (("sgd", 0.05), ("adam", 1e-3)):
        load_adapter_vector(lm.model, start, layout)
        s = LocalTrainingSettings(learning_rate=lr, optimizer=name, batch_size=8, steps=2, clip_norm=1.0,
                                  clipping="hooks", secure_mode=False, max_seq_len=16)
        r = train_local(lm.model, data, s, 1.1, physical_batch_size=4)
        facts.append((r.num_samples, r.steps, r.sample_rate, r.noise_multiplier, r.clip_norm))
    assert facts[0] == facts[1]
    assert LocalTrainingSettings(optimizer="adam").learning_rate == 0.002  # a rate for the optimizer, unless set
    assert LocalTrainingSettings(optimizer="adam", learning_rate=0.1).learning_rate == 0.1
    with pytest.raises(ConfigError, match="weight_decay: only optimizer = .adamw."):
        parse_model(LocalTrainingSettings, {"optimizer": "adam", "weight_decay": 0.01})
