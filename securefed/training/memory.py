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
that fits wins. With ``[capacity] layers = "auto"`` and nothing fitting the whole adapter, the same
candidates are tried for LoRA in ever fewer top layers (a partial member,
:mod:`securefed.heterogeneous`): layers below the lowest trained one run forward without keeping
activations, and Opacus holds inputs and per-sample gradients only for the trained ones. Micro-batches never change the privacy accounting (one Poisson-sampled logical batch
per step); checkpointing and quantization change only speed and the base's numerics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from securefed.errors import ConfigError
from securefed.heterogeneous.groups import layer_of
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
    trained_layers: int | None = None  # LoRA trained in the top k layers only; None: every layer

    @property
    def estimated_gb(self) -> float:
        return self.estimated_bytes / GIB

    def describe(self) -> str:
        layers = "" if self.trained_layers is None else f", LoRA in the top {self.trained_layers} layers only"
        return (f"physical batch {self.physical_batch_size}, gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}, quantization {self.quantization}{layers}: "
                f"~{self.estimated_gb:.2f} GiB per step")


def estimate_step_bytes(shape: ModelShape, *, dtype: str, quantization: str, physical_batch: int, seq_len: int,
                        checkpointing: bool, adapter_params: int, adapted_layers: int,
                        trained_layers: int | None = None) -> int:
    """Conservative peak bytes of one DP-SGD step (see the module docstring). ``trained_layers``: LoRA
    trains in the top k layers only (``adapter_params`` and ``adapted_layers`` then count those)."""
    a = _DTYPE_BYTES[dtype]
    other = shape.total_params - shape.linear_params
    weights = (shape.linear_params * _QUANT_BYTES[quantization] + other * a if quantization != "none"
               else shape.total_params * a)
    tokens = physical_batch * seq_len
    per_token_layer = a * (10 * shape.hidden + 4 * shape.intermediate + 2 * shape.heads * seq_len)
    kept = shape.layers if trained_layers is None else min(trained_layers, shape.layers)
    if checkpointing:
        acts = tokens * kept * shape.hidden * a + tokens * per_token_layer
    else:
        # a frozen layer below holds one layer's activations while it runs, then frees them
        acts = tokens * kept * per_token_layer + (tokens * per_token_layer if kept < shape.layers else 0)
    # Opacus keeps each adapted layer's input in float32, plus [B, P] per-sample gradients twice.
    dp = 4 * tokens * adapted_layers * shape.hidden + 2 * 4 * physical_batch * adapter_params
    loss = tokens * shape.hidden * (a + 4) + min(CHUNK_BYTES, 3 * 4 * tokens * shape.vocab)
    return int(FRAMEWORK_BYTES + weights + acts + dp + loss + 3 * 4 * adapter_params)


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(math.ceil(out[-1] / 2))
    return out


@dataclass(frozen=True)
class TrainedPart:
    """One choice of how much adapter to train: the top ``layers`` (None: all), with their size."""

    layers: int | None
    adapter_params: int
    adapted_layers: int  # adapted modules (Opacus keeps each one's input)


def plan_memory(shape: ModelShape, settings: ModelSettings, *, dtype: str, logical_batch: int, seq_len: int,
                adapter_params: int, adapted_layers: int, fewer_layers: list[TrainedPart] | None = None,
                ) -> MemoryPlan:
    """The fastest setting whose estimate fits ``settings.max_memory_gb`` (or the configured one when
    no cap is set). ``fewer_layers``: partial adapters to try, in order, when nothing fits the whole one
    (a member with ``[capacity] layers = "auto"``). ``ConfigError`` naming what would fit when nothing does."""
    whole = TrainedPart(None, adapter_params, adapted_layers)
    first_error: ConfigError | None = None
    for part in [whole, *(fewer_layers or [])]:
        try:
            return _plan_part(shape, settings, dtype=dtype, logical_batch=logical_batch, seq_len=seq_len, part=part,
                              suggest_layers=fewer_layers is None)
        except ConfigError as exc:
            first_error = first_error or exc
    assert first_error is not None
    if fewer_layers:
        raise ConfigError(f"{first_error}; LoRA in the top layer alone does not fit either") from None
    raise first_error


def _plan_part(shape: ModelShape, settings: ModelSettings, *, dtype: str, logical_batch: int, seq_len: int,
               part: TrainedPart, suggest_layers: bool) -> MemoryPlan:
    fixed_phys = settings.physical_batch_size
    physicals = [min(fixed_phys, logical_batch)] if fixed_phys else _halvings(logical_batch)
    gc = settings.gradient_checkpointing
    quants = {"none": ["none"], "nf4": ["nf4"], "int8": ["int8"], "auto": ["none", "int8", "nf4"]}[settings.quantization]

    def est(p: int, ckpt: bool, q: str) -> int:
        return estimate_step_bytes(shape, dtype=dtype, quantization=q, physical_batch=p, seq_len=seq_len,
                                   checkpointing=ckpt, adapter_params=part.adapter_params,
                                   adapted_layers=part.adapted_layers, trained_layers=part.layers)

    cap = None if settings.max_memory_gb is None else int(settings.max_memory_gb * GIB)
    if cap is None:
        p, ckpt, q = physicals[0], gc is True, quants[0]
        return MemoryPlan(p, ckpt, q, est(p, ckpt, q), trained_layers=part.layers)
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
            return MemoryPlan(p, ckpt, q, e, cap, trained_layers=part.layers)
    p, ckpt, q = min(candidates, key=lambda c: est(*c))
    need = est(p, ckpt, q) / GIB
    more = [] if settings.quantization == "auto" else ['quantization = "auto"']
    if suggest_layers and part.layers is None:
        more.append('[capacity] layers = "auto" (fewer top layers, in a heterogeneous federation)')
    raise ConfigError(
        f"[model] max_memory_gb = {settings.max_memory_gb:g}: no setting fits a step of batch {logical_batch} x "
        f"seq {seq_len} (the smallest, physical batch {p} with gradient checkpointing {'on' if ckpt else 'off'} and "
        f"quantization {q}, needs ~{need:.1f} GiB); raise max_memory_gb to {math.ceil(need * 10) / 10:g}, lower "
        f"training.max_seq_len{', or allow ' + ' or '.join(more) if more else ''}"
    )


def trained_parts(layout, layers: str | int = "all") -> tuple[TrainedPart, list[TrainedPart] | None]:
    """For ``[capacity] layers``: the part to plan first and, for 'auto', the fewer-layer ones to try
    next (``None``: the member will not train fewer layers)."""
    order: list[str] = []
    for n in layout.names:
        if (key := layer_of(n)) not in order:
            order.append(key)

    def part(k: int | None) -> TrainedPart:
        keep = set(order if k is None else order[len(order) - k:])
        names = [(n, size) for n, size in zip(layout.names, layout.sizes) if layer_of(n) in keep]
        return TrainedPart(k, sum(size for _, size in names), sum(1 for n, _ in names if ".lora_B." in n))

    if isinstance(layers, int):
        return part(None if layers >= len(order) else layers), None
    fewer = [part(k) for k in range(len(order) - 1, 0, -1)] if layers == "auto" else None
    return part(None), fewer


def plan_for_checkpoint(model_dir, settings: ModelSettings, lora, *, logical_batch: int, seq_len: int,
                        layers: str | int = "all") -> MemoryPlan:
    """:func:`plan_memory` for a checkpoint directory and LoRA settings, from its config alone;
    ``layers`` is the member's ``[capacity] layers``."""
    config, trust = load_config(model_dir, settings.trust_remote_code)
    shape = ModelShape.from_config(config, trust_remote_code=trust)
    layout = layout_for_config(config, lora, trust_remote_code=trust)
    first, fewer = trained_parts(layout, layers)
    dtype = dtype_name(resolve_dtype(settings.dtype, config, resolve_device(settings.device)))
    if first.layers is not None:  # a fixed number of top layers: plan that part alone
        return _plan_part(shape, settings, dtype=dtype, logical_batch=logical_batch, seq_len=seq_len, part=first,
                          suggest_layers=False)
    return plan_memory(shape, settings, dtype=dtype, logical_batch=logical_batch, seq_len=seq_len,
                       adapter_params=first.adapter_params, adapted_layers=first.adapted_layers, fewer_layers=fewer)
