"""``[model] max_memory_gb``: the planner picks the fastest setting whose estimate fits, in order, and
refuses with what would fit. Shapes come from configs on the meta device (no weights)."""

from __future__ import annotations

import pytest
import transformers as T
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import ConfigError
from securefed.training.config import ModelSettings
from securefed.training.families import ModelKind
from securefed.training.memory import GIB, ModelShape, estimate_step_bytes, plan_memory

# Qwen2-0.5B's shape (full depth), random weights never built: only counted on the meta device.
QWEN05 = T.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
ADAPTER, ADAPTED = 540_672, 48  # LoRA r=8 on q_proj, v_proj


@pytest.fixture(scope="module")
def qwen():
    return ModelShape.from_config(QWEN05)


def _plan(shape, dtype="fp32", **kw):
    return plan_memory(shape, ModelSettings(**kw), dtype=dtype, logical_batch=16, seq_len=256,
                       adapter_params=ADAPTER, adapted_layers=ADAPTED)


def test_shape_counts_the_real_parameters(qwen):
    assert 490e6 < qwen.total_params < 500e6  # Qwen2-0.5B: 494M with tied embeddings
    assert qwen.linear_params < qwen.total_params - 130e6  # the 136M-parameter embedding is not a linear layer
    assert (qwen.hidden, qwen.layers, qwen.heads, qwen.vocab) == (896, 24, 14, 151936)


def test_no_cap_keeps_the_configured_setting(qwen):
    p = _plan(qwen)
    assert (p.physical_batch_size, p.gradient_checkpointing, p.quantization) == (16, False, "none")
    p = _plan(qwen, physical_batch_size=4, gradient_checkpointing=True, quantization="nf4")
    assert (p.physical_batch_size, p.gradient_checkpointing, p.quantization) == (4, True, "nf4")


def test_the_cap_picks_micro_batches_then_checkpointing_then_quantization(qwen):
    roomy = _plan(qwen, max_memory_gb=64)
    assert (roomy.physical_batch_size, roomy.gradient_checkpointing) == (16, False)
    eight = _plan(qwen, max_memory_gb=8)  # the target: the 0.5B shape at batch 16 x 256 in 8 GB
    assert eight.estimated_bytes <= 8 * GIB and eight.physical_batch_size < 16
    tight = _plan(qwen, max_memory_gb=4)
    assert tight.gradient_checkpointing and tight.quantization == "none"
    tighter = _plan(qwen, max_memory_gb=2.6, quantization="auto")
    assert tighter.quantization in ("int8", "nf4") and tighter.estimated_bytes <= 2.6 * GIB
    with pytest.raises(ConfigError) as e:
        _plan(qwen, max_memory_gb=2.6)  # the same cap without quantization
    assert "quantization = \"auto\"" in str(e.value) and "\n" not in str(e.value)
    assert "needs ~" in str(e.value) and "raise max_memory_gb to" in str(e.value)
    # A member that forbids checkpointing gets smaller micro-batches instead, or a refusal.
    nockpt = _plan(qwen, max_memory_gb=8, gradient_checkpointing=False)
    assert not nockpt.gradient_checkpointing and nockpt.estimated_bytes <= 8 * GIB


def test_bf16_needs_less_than_fp32(qwen):
    assert _plan(qwen, "bf16").estimated_bytes < 0.7 * _plan(qwen, "fp32").estimated_bytes


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 32), st.integers(8, 1024), st.sampled_from(["none", "int8", "nf4"]), st.booleans())
def test_estimate_grows_with_batch_and_sequence(b, s, q, ckpt):
    shape = ModelShape(total_params=10**8, linear_params=8 * 10**7, hidden=512, intermediate=1408, layers=8,
                       heads=8, vocab=32000, kind=ModelKind.CAUSAL)
    kw = dict(dtype="fp32", quantization=q, checkpointing=ckpt, adapter_params=10**5, adapted_layers=16)
    e = estimate_step_bytes(shape, physical_batch=b, seq_len=s, **kw)
    assert estimate_step_bytes(shape, physical_batch=b + 1, seq_len=s, **kw) > e
    assert estimate_step_bytes(shape, physical_batch=b, seq_len=s + 8, **kw) > e
    if not ckpt:
        assert estimate_step_bytes(shape, physical_batch=b, seq_len=s, **{**kw, "checkpointing": True}) <= e
