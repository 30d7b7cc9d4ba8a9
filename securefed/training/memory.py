"""Fit a DP-SGD step into ``[model] max_memory_gb``: pick physical batch, checkpointing, quantization.

The estimate is analytic (from the architecture's config, built on the meta device to count
parameters; nothing is loaded), deliberately conservative, and has four parts:

* **weights**: every parameter at the compute dtype, except linear layers (not the output head)
  under bitsandbytes: ~0.53 bytes/parameter for nf4 with double quantization, ~1.06 for int8;
* **activations** kept for the backward pass, per token and layer: the normalised inputs, the
  attention projections and scores (``2 x heads x seq``), the MLP's hidden activations (``4 x
  intermediate``) and the residual stream; with gradient checkpointing only each layer's input is
  kept, plus one layer's activations while it is recomputed;
* **DP-SGD**: what Opacus holds for LoRA: each adapted layer's input (float32) and the per-sample
  gradients with their clipped copy (``2 x physical batch x adapter size``, hooks mode);
* **the loss**: the final hidden states plus one chunk of logits (see :mod:`securefed.training.loss`),
  and a fixed allowance for the framework itself.

Candidates are tried fastest first - no checkpointing with the whole logical batch, then smaller
micro-batches, then checkpointing, then (with ``quantization = "auto"``) int8 and nf4 - and the first
that fits wins. Micro-batches never change the privacy accounting (one Poisson-sampled logical batch
per step); checkpointing and quantization change only speed and the base's numerics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from securefed.errors import ConfigError
from securefed.training.config import ModelSettings
from securefed.training.families import ModelKind, is_linear, model_kind
from securefed.training.loss import CHUNK_BYTES
from securefed.training.model import (
    auto_class,
    dtype_name,
    layout_for_config,
    load_config,
    resolve_device,
    resolve_dtype,
    tie_head,
)

GIB = 1 << 30
FRAMEWORK_BYTES = int(0.6 * GIB)  # torch + transformers + the daemon, resident before any model
_QUANT_BYTES = {"nf4": 0.53, "int8": 1.06}
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of an architecture."""

    total_params: int
    linear_params: int  # quantizable: linear layers other than the output head
    hidden: int
    intermediate: int
    layers: int  # encoder + decoder layers for seq2seq
    heads: int
    vocab: int
    kind: ModelKind

    @classmethod
    def from_config(cls, config, *, trust_remote_code: bool = False) -> "ModelShape":
        kind = model_kind(config)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = auto_class(kind).from_config(config, trust_remote_code=trust_remote_code)
            tie_head(model, config)
        head = model.get_output_embeddings()
        total = sum(p.numel() for p in model.parameters())
        linear = sum(p.numel() for m in model.modules() if is_linear(m) and m is not head
                     for p in m.parameters(recurse=False))
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = int(getattr(text, "hidden_size"))
        layers = int(getattr(text, "num_hidden_layers"))
        if kind is ModelKind.SEQ2SEQ:
            layers = int(getattr(text, "num_layers", layers) or layers) + int(
                getattr(text, "num_decoder_layers", None) or getattr(text, "decoder_layers", None) or layers)
        inter = next((int(v) for k in ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim")
                      if (v := getattr(text, k, None))), 4 * hidden)
        heads = int(getattr(text, "num_attention_heads"))
        vocab = int(getattr(text, "vocab_size"))
        return cls(total, linear, hidden, inter, layers, heads, vocab, kind)


@dataclass(frozen=True)
class MemoryPlan:
    physical_batch_size: int
    gradient_checkpointing: bool
    quantization: str  # none | nf4 | int8
    estimated_bytes: int
    cap_bytes: int | None = None

    @property
    def estimated_gb(self) -> float:
        return self.estimated_bytes / GIB

    def describe(self) -> str:
        return (f"physical batch {self.physical_batch_size}, gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}, quantization {self.quantization}: "
                f"~{self.estimated_gb:.2f} GiB per step")


def estimate_step_bytes(shape: ModelShape, *, dtype: str, quantization: str, physical_batch: int, seq_len: int,
                        checkpointing: bool, adapter_params: int, adapted_layers: int) -> int:
    """Conservative peak bytes of one DP-SGD step (see the module docstring)."""
    a = _DTYPE_BYTES[dtype]
    other = shape.total_params - shape.linear_params
    weights = (shape.linear_params * _QUANT_BYTES[quantization] + other * a if quantization != "none"
               else shape.total_params * a)
    tokens = physical_batch * seq_len
    per_token_layer = a * (10 * shape.hidden + 4 * shape.intermediate + 2 * shape.heads * seq_len)
    if checkpointing:
        acts = tokens * shape.layers * shape.hidden * a + tokens * per_token_layer
    else:
        acts = tokens * shape.layers * per_token_layer
    # Opacus keeps each adapted layer's input in float32, plus [B, P] per-sample gradients twice.
    dp = 4 * tokens * adapted_layers * shape.hidden + 2 * 4 * physical_batch * adapter_params
    loss = tokens * shape.hidden * (a + 4) + min(CHUNK_BYTES, 3 * 4 * tokens * shape.vocab)
    return int(FRAMEWORK_BYTES + weights + acts + dp + loss + 3 * 4 * adapter_params)


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(math.ceil(out[-1] / 2))
    return out


def plan_memory(shape: ModelShape, settings: ModelSettings, *, dtype: str, logical_batch: int, seq_len: int,
                adapter_params: int, adapted_layers: int) -> MemoryPlan:
    """The fastest setting whose estimate fits ``settings.max_memory_gb`` (or the configured one when
    no cap is set). ``ConfigError`` naming what would fit when nothing does."""
    fixed_phys = settings.physical_batch_size
    physicals = [min(fixed_phys, logical_batch)] if fixed_phys else _halvings(logical_batch)
    gc = settings.gradient_checkpointing
    quants = {"none": ["none"], "nf4": ["nf4"], "int8": ["int8"], "auto": ["none", "int8", "nf4"]}[settings.quantization]

    def est(p: int, ckpt: bool, q: str) -> int:
        return estimate_step_bytes(shape, dtype=dtype, quantization=q, physical_batch=p, seq_len=seq_len,
                                   checkpointing=ckpt, adapter_params=adapter_params, adapted_layers=adapted_layers)

    cap = None if settings.max_memory_gb is None else int(settings.max_memory_gb * GIB)
    if cap is None:
        p, ckpt, q = physicals[0], gc is True, quants[0]
        return MemoryPlan(p, ckpt, q, est(p, ckpt, q))
    candidates: list[tuple[int, bool, str]] = []
    for q in quants:
        # Without checkpointing only down to a quarter of the logical batch (tiny micro-batches run the
        # matmuls inefficiently); then checkpointing over every size.
        if gc is not True:
            candidates += [(p, False, q) for p in physicals if p >= min(physicals[0], max(1, logical_batch // 4))]
        if gc is not False:
            candidates += [(p, True, q) for p in physicals]
        if gc is False:
            candidates += [(p, False, q) for p in physicals if p < min(physicals[0], max(1, logical_batch // 4))]
    for p, ckpt, q in candidates:
        e = est(p, ckpt, q)
        if e <= cap:
            return MemoryPlan(p, ckpt, q, e, cap)
    p, ckpt, q = min(candidates, key=lambda c: est(*c))
    need = est(p, ckpt, q) / GIB
    more = [] if settings.quantization == "auto" else ['quantization = "auto"']
    raise ConfigError(
        f"[model] max_memory_gb = {settings.max_memory_gb:g}: no setting fits a step of batch {logical_batch} x "
        f"seq {seq_len} (the smallest, physical batch {p} with gradient checkpointing {'on' if ckpt else 'off'} and "
        f"quantization {q}, needs ~{need:.1f} GiB); raise max_memory_gb to {math.ceil(need * 10) / 10:g}, lower "
        f"training.max_seq_len{', or allow ' + more[0] if more else ''}"
    )


def plan_for_checkpoint(model_dir, settings: ModelSettings, lora, *, logical_batch: int, seq_len: int) -> MemoryPlan:
    """:func:`plan_memory` for a checkpoint directory and LoRA settings, from its config alone."""
    config, trust = load_config(model_dir, settings.trust_remote_code)
    shape = ModelShape.from_config(config, trust_remote_code=trust)
    layout = layout_for_config(config, lora, trust_remote_code=trust)
    adapted = sum(1 for n in layout.names if ".lora_B." in n)
    dtype = dtype_name(resolve_dtype(settings.dtype, config, resolve_device(settings.device)))
    return plan_memory(shape, settings, dtype=dtype, logical_batch=logical_batch, seq_len=seq_len,
                       adapter_params=layout.total_size, adapted_layers=adapted)
