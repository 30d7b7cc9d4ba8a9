"""The family matrix: every architecture a member may bring loads, gets LoRA on its attention, trains
with exact per-sample clipping, round-trips its adapter vector bit-exactly and exports a PEFT adapter
that reproduces its logits. Tiny configs of the real families, random weights, saved with
save_pretrained and loaded through the production path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from family_zoo import AUTO_TARGETS, FAMILIES, SEQ2SEQ, build_family, family_config, model_class
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from securefed.training.adapter import adapter_to_vector, initial_vector, load_adapter_vector
from securefed.training.config import ClippingMode, LocalTrainingSettings, LoraSettings
from securefed.training.data import blocks_from_texts, demo_corpus, evaluate
from securefed.training.dp import DPTrainer
from securefed.training.families import ModelKind
from securefed.training.loss import SequenceLoss
from securefed.training.model import layout_for_config, load_model
from securefed.training.preset import train_tokenizer
from securefed.training.rng import TorchSource

LORA = LoraSettings(rank=2, alpha=4.0, init_seed=3)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tok = train_tokenizer(512)
    root = tmp_path_factory.mktemp("zoo")
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = build_family(name, root / name, tokenizer=tok)
        return built[name]

    return get


def _random_b(model, seed=11):
    """Non-zero adapter (B starts at 0, which would make every A gradient zero)."""
    vec, layout = adapter_to_vector(model)
    g = torch.Generator().manual_seed(seed)  # not secret
    load_adapter_vector(model, (torch.randn(vec.shape, generator=g) * 0.2).numpy().astype(np.float32), layout)


def _data(lm, seq=16):
    topics = demo_corpus()
    return blocks_from_texts([topics[k] for k in sorted(topics)[:3]], lm.tokenizer, seq, lm.kind)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_with_auto_targets_and_the_server_builds_the_same_adapter(family, zoo, caplog):
    with caplog.at_level(logging.INFO, logger="securefed.training.families"):
        lm = load_model(zoo(family), LORA)
    assert lm.kind is (ModelKind.SEQ2SEQ if family in SEQ2SEQ else ModelKind.CAUSAL)
    assert type(lm.model.get_base_model()).__name__ == type(model_class(family_config(family)).from_config(
        family_config(family))).__name__
    wrapped = {n.rsplit(".", 1)[-1] for n, m in lm.model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(AUTO_TARGETS[family])
    assert all(t in caplog.text for t in AUTO_TARGETS[family])  # the chosen names are logged
    # Every adapted module sits in an attention block (encoder, decoder and cross-attention for seq2seq).
    parents = {type(m).__name__ for m in lm.model.modules()
               if any(isinstance(c, LoraLayer) for c in m.children())}
    assert parents and all("attention" in p.lower() for p in parents), parents
    # The server's round-0 adapter: layout from the config alone (meta device), values from the seed.
    vec, layout = adapter_to_vector(lm.model)
    assert layout_for_config(zoo(family), LORA) == layout
    assert initial_vector(layout, LORA.init_seed).tobytes() == vec.tobytes()
    assert np.count_nonzero(vec) > 0  # A is random, B is zero
    out = lm.model(**SequenceLoss(lm.model, lm.kind).inputs(_data(lm).batch([0, 1])))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_dp_sgd_per_sample_clipping_is_exact(family, zoo):
    """One DP step (noise 0, micro-batches of 2 under a logical batch of 4) equals SGD on the mean of
    per-example gradients each clipped to C, computed one example at a time without Opacus."""
    lm = load_model(zoo(family), LORA)
    _random_b(lm.model)
    data = _data(lm)
    batch = data.batch([0, 2, 3, 5])
    loss = SequenceLoss(lm.model, lm.kind)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    lm.model.train()
    per = []
    for i in range(4):
        lm.model.zero_grad(set_to_none=True)
        loss(lm.model, {k: v[i:i + 1] for k, v in batch.items()}).sum().backward()
        per.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
    lm.model.zero_grad(set_to_none=True)
    g = torch.stack(per)
    norms = g.norm(dim=1)
    assert float(norms.min()) > 0
    clip = float(norms.min()) / 3.0  # binds for every example
    clipped = g * torch.clamp(clip / (norms + 1e-6), max=1.0)[:, None]
    start, _ = adapter_to_vector(lm.model)
    expected = start - 0.5 * clipped.sum(0).numpy() / 4
    settings = LocalTrainingSettings(learning_rate=0.5, batch_size=4, steps=1, clip_norm=clip, secure_mode=False,
                                     max_seq_len=16, clipping="hooks")
    trainer = DPTrainer(lm.model, settings, 0.0, 4, ClippingMode.HOOKS, TorchSource(), physical_batch_size=2)
    try:
        trainer.step(batch)
        np.testing.assert_allclose(trainer.last_norms.numpy(), norms.numpy(), rtol=1e-3)
    finally:
        trainer.close()
    got, _ = adapter_to_vector(lm.model)
    assert np.abs(got - start).max() > 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_vector_round_trip_and_peft_export_reproduce_the_model(family, zoo, tmp_path):
    lm = load_model(zoo(family), LORA)
    vec, layout = adapter_to_vector(lm.model)
    weird = np.linspace(-2, 2, vec.size).astype(np.float32)
    weird[::5] = np.float32(1e-45)  # subnormals
    weird[1] = np.float32(-0.0)
    load_adapter_vector(lm.model, weird, layout)
    back, _ = adapter_to_vector(lm.model)
    assert back.tobytes() == weird.tobytes()
    _random_b(lm.model, seed=5)
    lm.model.save_pretrained(str(tmp_path / "peft"))
    base = model_class(family_config(family)).from_pretrained(str(zoo(family)))
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    batch = _data(lm).batch([1, 4])
    inputs = SequenceLoss(lm.model, lm.kind).inputs(batch)
    lm.model.eval()
    reloaded.eval()
    with torch.no_grad():
        a, b = lm.model(**inputs).logits, reloaded(**inputs).logits
        with reloaded.disable_adapter():
            plain = reloaded(**inputs).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, plain)  # control: the adapter changes the logits, so equality means something


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_loss_equals_full_logits_loss_and_gradient(family, zoo):
    lm = load_model(zoo(family), LORA)
    _random_b(lm.model)
    batch = _data(lm).batch([0, 1, 2])
    full = SequenceLoss(lm.model, lm.kind, chunk_bytes=1 << 40, verify=False)
    full.chunked = False
    tiny = SequenceLoss(lm.model, lm.kind, chunk_bytes=1)  # one position per chunk, checkpointed
    assert tiny.chunked
    params = [p for p in lm.model.parameters() if p.requires_grad]
    grads = []
    for loss in (full, tiny):
        lm.model.zero_grad(set_to_none=True)
        value = loss(lm.model, batch)
        value.sum().backward()
        grads.append((value.detach(), torch.cat([p.grad.reshape(-1) for p in params])))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
    nll, ppl = evaluate(lm.model, _data(lm), kind=lm.kind, max_examples=8)
    assert np.isfinite(nll) and ppl == pytest.approx(np.exp(nll))
