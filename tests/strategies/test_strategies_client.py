"""Strategy corrections applied inside DP-SGD local training (tiny preset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefed.strategies import FedProx, Scaffold
from securefed.training.adapter import adapter_to_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import DPTrainer, per_sample_loss, train_local
from securefed.training.model import load_model
from securefed.training.preset import build_tiny_model
from securefed.training.rng import TorchSource

LORA = LoraSettings(rank=2, alpha=4, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="session")
def tiny_dir_strat(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_strat"), "tiny", pretrain=False)


@pytest.fixture()
def setup(tiny_dir_strat):
    lm = load_model(tiny_dir_strat, LORA)
    vec, layout = adapter_to_vector(lm.model)
    g = torch.Generator().manual_seed(11)  # not secret
    load_adapter_vector(lm.model, (torch.randn(vec.shape, generator=g) * 0.1).numpy().astype(np.float32), layout)
    topics = demo_corpus()
    data = blocks_from_texts([topics[k] for k in sorted(topics)[10:14]], lm.tokenizer, 32)
    return lm, data


@pytest.fixture(autouse=True)
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def _mean_grad(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_sample_loss(logits, batch["labels"]).mean().backward()
    g = torch.cat([p.grad.reshape(-1) for p in params]).clone()
    model.zero_grad(set_to_none=True)
    return g.numpy()


def _settings(lr):
    return LocalTrainingSettings(learning_rate=lr, batch_size=3, steps=1, clip_norm=1e6, secure_mode=False)


@pytest.mark.parametrize("mode", [ClippingMode.GHOST, ClippingMode.HOOKS], ids=lambda m: m.value)
def test_scaffold_correction_is_added_to_private_gradient(setup, mode):
    lm, data = setup
    model = lm.model
    batch = data.batch([0, 1, 2])
    x0, _ = adapter_to_vector(model)
    dim = x0.size
    s = Scaffold(dim=dim, max_samples=100, delta_bound=1.0)
    rng = np.random.default_rng(0)  # not secret
    c, ci = (rng.normal(size=dim) * 0.01).astype(np.float32), (rng.normal(size=dim) * 0.01).astype(np.float32)
    g = _mean_grad(model, batch)
    lr = 0.2
    trainer = DPTrainer(model, _settings(lr), 0.0, 3, mode, TorchSource(), s.client_hooks(ci, c))
    try:
        trainer.step(batch)
    finally:
        trainer.close()
    x1, _ = adapter_to_vector(model)
    np.testing.assert_allclose(x1, x0 - lr * (g + c - ci), rtol=1e-4, atol=1e-6)


def test_fedprox_proximal_term_pulls_towards_global(setup, tiny_dir_strat):
    lm, data = setup
    model = lm.model
    batch = data.batch([3, 4, 5])
    x0, layout = adapter_to_vector(model)
    ref = load_model(tiny_dir_strat, LORA).model  # un-hooked twin for reference gradients
    lr, mu = 0.3, 0.5
    s = FedProx(dim=x0.size, max_samples=100, delta_bound=1.0, mu=mu)
    load_adapter_vector(ref, x0, layout)
    g0 = _mean_grad(ref, batch)
    trainer = DPTrainer(model, _settings(lr), 0.0, 3, ClippingMode.HOOKS, TorchSource(), s.client_hooks())
    try:
        trainer.step(batch)  # step 1: w == w_global, proximal gradient 0
        x1, _ = adapter_to_vector(model)
        np.testing.assert_allclose(x1, x0 - lr * g0, rtol=1e-4, atol=1e-6)
        load_adapter_vector(ref, x1, layout)
        g1 = _mean_grad(ref, batch)
        trainer.step(batch)  # step 2: + mu (w1 - w0)
    finally:
        trainer.close()
    x2, _ = adapter_to_vector(model)
    np.testing.assert_allclose(x2, x1 - lr * (g1 + mu * (x1 - x0)), rtol=1e-4, atol=1e-6)


def test_train_local_with_scaffold_end_to_end(setup):
    lm, data = setup
    x0, _ = adapter_to_vector(lm.model)
    s = Scaffold(dim=x0.size, max_samples=1000, delta_bound=1.0, control_bound=10.0)
    settings = LocalTrainingSettings(learning_rate=0.1, batch_size=4, steps=2, clip_norm=1.0, secure_mode=False)
    r = train_local(lm, data, settings, 1.0, strategy_state=s.client_hooks(s.initial_client_state(),
                                                                          s.initial_server_state()))
    p = s.client_payload(r, client_state=s.initial_client_state(), server_state=s.initial_server_state())
    assert p.vector.shape == (2 * x0.size + 1,)
    np.testing.assert_allclose(p.client_state, -r.delta / (2 * 0.1), rtol=1e-5, atol=1e-6)
