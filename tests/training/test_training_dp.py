"""DP-SGD correctness on LoRA (guards against opacus#820-style silently wrong adapter gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from securefed.errors import ConfigError, InvalidInput
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import DPTrainer, per_sample_loss, plan_steps, train_local
from securefed.training.model import load_model
from securefed.training.preset import build_tiny_model
from securefed.training.rng import CsprngSource, TorchSource

MODES = [ClippingMode.GHOST, ClippingMode.HOOKS]
LORA = LoraSettings(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"))


@pytest.fixture(scope="session")
def tiny_dir_dp(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_dp"), "tiny", pretrain=False)


@pytest.fixture(scope="session")
def data_dp(tiny_dir_dp):
    lm = load_model(tiny_dir_dp, LORA)
    topics = demo_corpus()
    return blocks_from_texts([topics[k] for k in sorted(topics)[:6]], lm.tokenizer, 32)


@pytest.fixture()
def lm(tiny_dir_dp):
    m = load_model(tiny_dir_dp, LORA)
    # Non-zero B so that the lora_A gradients are non-zero too (B starts at 0 in LoRA).
    vec, layout = adapter_to_vector(m.model)
    g = torch.Generator().manual_seed(7)  # not secret
    vec = (torch.randn(vec.shape, generator=g) * 0.1).numpy().astype(np.float32)
    load_adapter_vector(m.model, vec, layout)
    return m


def _per_sample_grads(model, batch) -> torch.Tensor:
    """Reference: per-sample adapter gradients by one plain backward per example, [B, P]."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(batch["input_ids"].shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"][i : i + 1], attention_mask=batch["attention_mask"][i : i + 1]).logits
        per_sample_loss(logits, batch["labels"][i : i + 1]).sum().backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def _settings(mode, lr=0.1, clip=1e6):
    return LocalTrainingSettings(learning_rate=lr, batch_size=4, steps=1, clip_norm=clip, clipping=mode,
                                 secure_mode=False, max_seq_len=32)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_dp_step_without_noise_or_clipping_equals_sgd(lm, data_dp, mode):
    model = lm.model
    batch = data_dp.batch([0, 3, 5, 9])
    start, _ = adapter_to_vector(model)
    g = _per_sample_grads(model, batch)
    expected = start - 0.1 * g.mean(0).numpy()
    trainer = DPTrainer(model, _settings(mode), 0.0, 4, mode, TorchSource())
    try:
        trainer.step(batch)
    finally:
        trainer.close()
    got, _ = adapter_to_vector(model)
    assert np.abs(got - start).max() > 1e-5  # it moved
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Per-sample norms Opacus computed match the reference per-sample gradients.
    np.testing.assert_allclose(trainer.last_norms.numpy(), g.norm(dim=1).numpy(), rtol=1e-3)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_dp_step_clips_each_sample_to_C(lm, data_dp, mode):
    model = lm.model
    batch = data_dp.batch([1, 2, 4, 7])
    start, _ = adapter_to_vector(model)
    g = _per_sample_grads(model, batch)
    norms = g.norm(dim=1)
    clip = float(norms.min()) / 3.0  # binds for every example
    factors = torch.clamp(clip / (norms + 1e-6), max=1.0)
    clipped = g * factors[:, None]
    assert torch.all(clipped.norm(dim=1) <= clip * (1 + 1e-5))
    expected = start - 0.1 * clipped.sum(0).numpy() / 4
    trainer = DPTrainer(model, _settings(mode, clip=clip), 0.0, 4, mode, TorchSource())
    try:
        trainer.step(batch)
    finally:
        trainer.close()
    got, _ = adapter_to_vector(model)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    # The total update is then bounded by lr * C (each of the B samples contributes at most C, divided by B).
    assert np.linalg.norm(got - start) <= 0.1 * clip * (1 + 1e-4)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_noise_has_the_calibrated_std(lm, mode):
    """An empty batch is a pure-noise step: update = -lr * N(0, (sigma C)^2) / B per coordinate."""
    model = lm.model
    start, _ = adapter_to_vector(model)
    sigma, clip, lr, b = 2.0, 0.5, 1.0, 4
    trainer = DPTrainer(model, _settings(mode, lr=lr, clip=clip), sigma, b, mode, CsprngSource())
    try:
        assert trainer.step(None) is None
    finally:
        trainer.close()
    got, _ = adapter_to_vector(model)
    noise = (start - got) * b / lr
    expected_std = sigma * clip
    assert noise.size > 2000
    # std estimate: relative standard error ~ 1/sqrt(2n) ~ 1.5%; 10% is ~6 sigma.
    assert abs(noise.std() / expected_std - 1) < 0.1
    assert abs(noise.mean()) < 5 * expected_std / math.sqrt(noise.size)


def test_csprng_gaussian_moments_and_freshness():
    a, b = CsprngSource(), CsprngSource()
    x = a.gaussian(200_000, 3.0)
    assert abs(x.std() - 3.0) < 0.05 and abs(x.mean()) < 0.05
    # kurtosis of a Gaussian is 3
    assert abs(((x / x.std()) ** 4).mean() - 3.0) < 0.1
    assert not np.array_equal(a.gaussian(16, 1.0), b.gaussian(16, 1.0))  # fresh key per source
    bern = a.bernoulli(100_000, 0.1)
    assert abs(bern.mean() - 0.1) < 0.01


def test_train_local_reports_accounting_facts(lm, data_dp):
    settings = LocalTrainingSettings(learning_rate=0.05, batch_size=4, steps=3, clip_norm=1.0, max_seq_len=32)
    seen = []
    r = train_local(lm, data_dp, settings, 0.8, progress=lambda s, t, loss: seen.append((s, t)))
    assert r.steps == 3 and seen == [(1, 3), (2, 3), (3, 3)]
    assert r.sample_rate == pytest.approx(4 / len(data_dp))
    assert r.num_samples == len(data_dp)
    assert r.noise_multiplier == 0.8 and r.clip_norm == 1.0
    assert r.secure_rng is True  # default secure_mode
    assert r.clipping_mode in (ClippingMode.GHOST, ClippingMode.HOOKS)
    vec, layout = adapter_to_vector(lm.model)
    assert r.delta.dtype == np.float32 and r.delta.shape == (layout.total_size,)
    assert np.abs(r.delta).max() > 0
    # Opacus hooks were removed: the model trains and evaluates normally afterwards.
    assert not any(hasattr(p, "grad_sample") for p in lm.model.parameters())
    r2 = train_local(lm, data_dp, settings, 0.8)
    assert r2.steps == 3


def test_train_local_auto_picks_clipping_by_memory(lm, data_dp, monkeypatch):
    import securefed.training.dp as dp

    settings = LocalTrainingSettings(batch_size=4, steps=1, secure_mode=False, max_seq_len=32)
    r = train_local(lm, data_dp, settings, 1.0)
    assert r.clipping_mode is ClippingMode.HOOKS and r.secure_rng is False  # small LoRA adapter
    monkeypatch.setattr(dp, "AUTO_GHOST_ABOVE_BYTES", 1)
    r = train_local(lm, data_dp, settings, 1.0)
    assert r.clipping_mode is ClippingMode.GHOST
    assert dp.choose_clipping(ClippingMode.HOOKS, 10**6, 10**9) == [ClippingMode.HOOKS]
    assert dp.choose_clipping(ClippingMode.AUTO, 64, 4_194_304) == [ClippingMode.GHOST, ClippingMode.HOOKS]


def test_auto_falls_back_to_hooks_when_ghost_fails(lm, data_dp, monkeypatch, caplog):
    import securefed.training.dp as dp

    monkeypatch.setattr(dp, "AUTO_GHOST_ABOVE_BYTES", 1)
    real_init = dp.DPTrainer.__init__

    def init(self, model, settings, sigma, b, mode, source, correction=None, **kw):
        if mode is ClippingMode.GHOST:
            raise NotImplementedError("Parameter tying is not supported with Ghost Clipping")
        real_init(self, model, settings, sigma, b, mode, source, correction, **kw)

    monkeypatch.setattr(dp.DPTrainer, "__init__", init)
    settings = LocalTrainingSettings(batch_size=4, steps=1, secure_mode=False, max_seq_len=32)
    with caplog.at_level("WARNING"):
        r = train_local(lm, data_dp, settings, 1.0)
    assert r.clipping_mode is ClippingMode.HOOKS
    assert "falling back to hooks" in caplog.text


def test_train_local_refusals(lm, data_dp):
    with pytest.raises(ConfigError, match="noise_multiplier"):
        train_local(lm, data_dp, LocalTrainingSettings(steps=1, batch_size=2), None)
    with pytest.raises(InvalidInput, match="batch_size"):
        train_local(lm, data_dp, LocalTrainingSettings(steps=1, batch_size=len(data_dp) + 1), 1.0)


def test_plan_steps_epochs():
    q, steps = plan_steps(LocalTrainingSettings(batch_size=10, epochs=2.0), 100)
    assert q == 0.1 and steps == 20
    q, steps = plan_steps(LocalTrainingSettings(batch_size=10, steps=7), 100)
    assert steps == 7
