"""Memory and speed on members' hardware: dtype, 4-/8-bit bases, gradient checkpointing under Opacus,
micro-batches under one logical DP batch, a loss that never holds the full logits, FFA-LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_zoo import family_config, model_class
from torch.utils._python_dispatch import TorchDispatchMode

from securefed.errors import ModelError
from securefed.training.adapter import adapter_to_vector, initial_vector, load_adapter_vector, lora_init_values
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings, ModelSettings
from securefed.training.data import blocks_from_texts, demo_corpus
from securefed.training.dp import DPTrainer, enable_gradient_checkpointing
from securefed.training.loss import SequenceLoss, per_sample_loss
from securefed.training.model import layout_for_config, load_model
from securefed.training.preset import build_tiny_model, train_tokenizer
from securefed.training.rng import TorchSource

LORA = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
CPU32 = ModelSettings(device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("hw") / "tiny", "tiny", pretrain=False)


def _data(lm, seq=32):
    topics = demo_corpus()
    return blocks_from_texts([topics[k] for k in sorted(topics)[:4]], lm.tokenizer, seq, lm.kind)


def _random_b(model, seed=7):
    vec, layout = adapter_to_vector(model)
    g = torch.Generator().manual_seed(seed)  # not secret
    load_adapter_vector(model, (torch.randn(vec.shape, generator=g) * 0.1).numpy().astype(np.float32), layout)


def _step(lm, batch, *, mode=ClippingMode.HOOKS, clip=1e6, sigma=0.0, physical=None, lr=0.1, b=None):
    settings = LocalTrainingSettings(learning_rate=lr, batch_size=b or batch["input_ids"].shape[0], steps=1,
                                     clip_norm=clip, secure_mode=False, max_seq_len=32, clipping=mode)
    start, _ = adapter_to_vector(lm.model)
    trainer = DPTrainer(lm.model, settings, sigma, settings.batch_size, mode, TorchSource(), physical_batch_size=physical)
    try:
        trainer.step(batch)
        norms = trainer.last_norms
    finally:
        trainer.close()
    got, layout = adapter_to_vector(lm.model)
    load_adapter_vector(lm.model, start, layout)  # leave the model as it was
    return got - start, norms


def _reference_clipped_update(lm, batch, clip, lr=0.1):
    loss = SequenceLoss(lm.model, lm.kind)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    lm.model.train()
    per = []
    for i in range(batch["input_ids"].shape[0]):
        lm.model.zero_grad(set_to_none=True)
        loss(lm.model, {k: v[i:i + 1] for k, v in batch.items()}).sum().backward()
        per.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
    lm.model.zero_grad(set_to_none=True)
    g = torch.stack(per)
    clipped = g * torch.clamp(clip / (g.norm(dim=1) + 1e-6), max=1.0)[:, None]
    return (-lr * clipped.sum(0) / g.shape[0]).numpy(), g.norm(dim=1)


# ----------------------------------------------------------------------------- micro-batches and noise

@pytest.mark.parametrize("mode", [ClippingMode.HOOKS, ClippingMode.GHOST], ids=lambda m: m.value)
def test_micro_batches_give_the_logical_batch_update(tiny, mode):
    lm = load_model(tiny, LORA)
    _random_b(lm.model)
    batch = _data(lm).batch([0, 1, 2, 3, 4, 5])
    whole, n1 = _step(lm, batch, mode=mode, clip=0.05)
    for physical in (1, 4):
        part, n2 = _step(lm, batch, mode=mode, clip=0.05, physical=physical)
        np.testing.assert_allclose(part, whole, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(n2.numpy(), n1.numpy(), rtol=1e-4)


def test_noise_is_added_once_per_logical_batch(tiny):
    """sigma C = 0.1 on a signal of at most C per example: with 4 micro-batches of one, noise added per
    micro-batch would double the std."""
    lm = load_model(tiny, LORA)
    batch = _data(lm).batch([0, 1, 2, 3])
    delta, _ = _step(lm, batch, clip=1e-3, sigma=100.0, physical=1, lr=1.0)
    noise = -delta * 4  # update = -lr (sum of clipped + N(0, (sigma C)^2)) / B
    assert noise.size > 2000 and abs(noise.std() / 0.1 - 1) < 0.1


# ----------------------------------------------------------------------------- gradient checkpointing

@pytest.mark.parametrize("mode", [ClippingMode.HOOKS, ClippingMode.GHOST], ids=lambda m: m.value)
def test_gradient_checkpointing_keeps_per_sample_clipping_exact(tiny, mode):
    plain = load_model(tiny, LORA)
    _random_b(plain.model)
    batch = _data(plain).batch([0, 2, 4, 6])
    ref, norms = _reference_clipped_update(plain, batch, clip=0.02)
    ckpt = load_model(tiny, LORA)
    _random_b(ckpt.model)
    enable_gradient_checkpointing(ckpt.model)
    assert ckpt.model.get_base_model().is_gradient_checkpointing
    got, got_norms = _step(ckpt, batch, mode=mode, clip=0.02, physical=2)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got_norms.numpy(), norms.numpy(), rtol=1e-3)


def test_naive_checkpointing_breaks_opacus_and_is_caught(tiny):
    """Negative control: transformers' own checkpointing re-records activations for Opacus' hooks during
    recomputation, leaving per-sample gradients unset; the trainer refuses to step on that."""
    lm = load_model(tiny, LORA)
    _random_b(lm.model)
    lm.model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(ModelError, match="per-sample gradients missing"):
        _step(lm, _data(lm).batch([0, 1]), clip=0.02)


# ----------------------------------------------------------------------------- the loss and its memory

class _LargestFloat(TorchDispatchMode):
    """The largest float32 storage any op allocates (views such as expand() share their base's)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // 4)
        return out


def test_the_loss_never_materialises_batch_x_seq_x_vocab_logits(tiny):
    lm = load_model(tiny, LORA)
    _random_b(lm.model)
    batch = _data(lm).batch(list(range(8)))
    b, s = batch["input_ids"].shape
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    chunked = SequenceLoss(lm.model, lm.kind, chunk_bytes=3 * 4 * b * vocab * 4)  # 4 positions per chunk
    assert chunked.chunked
    with _LargestFloat() as watch:
        chunked(lm.model, batch).sum().backward()
    hidden = lm.model.get_output_embeddings().weight.shape[1]
    # One chunk's logits at most (or the head's own weight, which views share).
    assert watch.largest <= max(b * 4 * vocab, vocab * hidden) < b * (s - 1) * vocab
    lm.model.zero_grad(set_to_none=True)
    with _LargestFloat() as control:  # negative control: the textbook loss holds them all at once
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_sample_loss(logits, batch["labels"]).sum().backward()
    assert control.largest >= b * (s - 1) * vocab


# ----------------------------------------------------------------------------- dtype and quantization

def test_a_bf16_checkpoint_stays_bf16_with_fp32_lora(tmp_path):
    cfg = family_config("llama")
    model = model_class(cfg).from_config(cfg).to(torch.bfloat16)
    d = tmp_path / "bf16"
    model.save_pretrained(str(d))
    train_tokenizer(512).save_pretrained(str(d))
    lm = load_model(d, LoraSettings(rank=2), ModelSettings(device="cpu"))  # dtype auto
    assert lm.dtype == "bf16" and lm.device == "cpu"
    base = {p.dtype for n, p in lm.model.named_parameters() if "lora_" not in n}
    lora = {p.dtype for n, p in lm.model.named_parameters() if "lora_" in n}
    assert base == {torch.bfloat16} and lora == {torch.float32}
    up = load_model(d, LoraSettings(rank=2), CPU32)
    assert {p.dtype for n, p in up.model.named_parameters() if "lora_" not in n} == {torch.float32}
    _random_b(lm.model)
    delta, norms = _step(lm, _data(lm, 16).batch([0, 1]), clip=0.01)
    assert np.isfinite(delta).all() and np.abs(delta).max() > 0


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_per_sample_clipping_is_exact_above_a_quantized_base(tiny, quant):
    lm = load_model(tiny, LORA, CPU32, quantization=quant)
    assert lm.quantization == quant
    q_proj = lm.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == ("Linear4bit" if quant == "nf4" else "Linear8bitLt")
    assert {p.dtype for n, p in lm.model.named_parameters() if p.requires_grad} == {torch.float32}
    _random_b(lm.model)
    batch = _data(lm).batch([0, 3, 5, 7])
    ref, norms = _reference_clipped_update(lm, batch, clip=float("inf"))
    clip = float(norms.min()) / 3
    ref, _ = _reference_clipped_update(lm, batch, clip=clip)
    got, got_norms = _step(lm, batch, clip=clip, physical=2)
    np.testing.assert_allclose(got_norms.numpy(), norms.numpy(), rtol=1e-3)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-7)
    # The layout does not depend on the member's quantization: the server's meta-device layout matches.
    assert adapter_to_vector(lm.model)[1] == layout_for_config(tiny, LORA)


# ----------------------------------------------------------------------------- FFA-LoRA

def test_ffa_lora_trains_only_b_from_the_shared_a(tiny):
    ffa = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"), freeze_a=True, init_seed=9)
    full = ffa.model_copy(update={"freeze_a": False})
    a, b = load_model(tiny, ffa), load_model(tiny, ffa)
    vec, layout = adapter_to_vector(a.model)
    assert all(".lora_B." in n for n in layout.names)
    assert 2 * layout.total_size < layout_for_config(tiny, full).total_size  # B only: under half the upload here
    assert layout_for_config(tiny, ffa) == layout and initial_vector(layout, 9).tobytes() == vec.tobytes()
    # Every member holds the same frozen A: the shared initialisation.
    for (n1, p1), (n2, p2) in zip(a.model.named_parameters(), b.model.named_parameters()):
        if ".lora_A." in n1:
            assert not p1.requires_grad and torch.equal(p1, p2)
            assert np.array_equal(p1.detach().numpy(), lora_init_values(n1, tuple(p1.shape), 9))
    before = {n: p.detach().clone() for n, p in a.model.named_parameters() if ".lora_A." in n}
    _random_b(a.model)
    delta, _ = _step(a, _data(a).batch([0, 1, 2]), clip=0.05)
    assert np.abs(delta).max() > 0
    assert all(torch.equal(p, before[n]) for n, p in a.model.named_parameters() if ".lora_A." in n)


def test_averaging_b_averages_the_products_exactly_only_with_a_shared_a():
    g = torch.Generator().manual_seed(0)  # not secret
    a = torch.randn(4, 16, generator=g, dtype=torch.float64)
    bs = [torch.randn(8, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    torch.testing.assert_close(sum(bi @ a for bi in bs) / 5, (sum(bs) / 5) @ a)
    a_s = [a + 0.1 * torch.randn(4, 16, generator=g, dtype=torch.float64) for _ in range(5)]  # A trained too
    mean_of_products = sum(bi @ ai for bi, ai in zip(bs, a_s)) / 5
    product_of_means = (sum(bs) / 5) @ (sum(a_s) / 5)
    assert (mean_of_products - product_of_means).abs().max() > 1e-3


# ----------------------------------------------------------------------------- 4-bit bases keep a gradient

def _lora_params_without_grad(lm, batch) -> list[str]:
    """An evaluation pass (eval mode, no grad), then one training backward pass."""
    lm.model.eval()
    with torch.no_grad():
        lm.model(input_ids=batch["input_ids"])
    lm.model.train()
    lm.model.zero_grad(set_to_none=True)
    SequenceLoss(lm.model, lm.kind)(lm.model, batch).sum().backward()
    missing = [n for n, p in lm.model.named_parameters() if p.requires_grad and p.grad is None]
    lm.model.zero_grad(set_to_none=True)
    return missing


def test_an_evaluation_pass_does_not_cut_the_gradient_through_a_4bit_base(tiny):
    lm = load_model(tiny, LORA, CPU32, quantization="nf4")
    batch = _data(lm).batch([0, 1])
    assert _lora_params_without_grad(lm, batch) == []
    assert _lora_params_without_grad(lm, batch) == []  # and again after a second evaluation


def test_control_bitsandbytes_cpu_inference_layout_leaves_lora_parameters_without_gradient(tiny):
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks 4-bit weights for inference only on CPUs with AVX-512 BF16")
    lm = load_model(tiny, LORA, CPU32, quantization="nf4")
    for m in lm.model.modules():  # what load_model turns off
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = True
    missing = _lora_params_without_grad(lm, _data(lm).batch([0, 1]))
    assert missing, "with the inference layout on, some LoRA parameters should receive no gradient"
