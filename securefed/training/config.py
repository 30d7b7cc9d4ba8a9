"""Settings for LoRA and private local training (validated pydantic models).

These are runtime settings of one client; the privacy budget itself lives in ``securefed.privacy``.
The noise multiplier is usually *not* set here: the client's accountant calibrates it to the budget
over the whole planned run and passes it to :func:`securefed.training.dp.train_local`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from securefed.config import StrictModel

# A module name or a dotted suffix of one ("q_proj", "self_attn.q_proj", "encoder.block.0.layer.0.SelfAttention.q").
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


class ClippingMode(str, Enum):
    """How per-sample gradient norms are obtained for clipping."""

    AUTO = "auto"  # ghost clipping if it works with this model, else hooks
    GHOST = "ghost"  # Opacus ghost clipping: per-sample norms without per-sample gradients (less memory)
    HOOKS = "hooks"  # Opacus grad_sample hooks: materialises per-sample gradients


class LoraSettings(StrictModel):
    """Which LoRA adapter to attach to the base model (every client and the server must agree)."""

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator: the update is (alpha / r) * B A.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input path during training.")
    target_modules: Literal["auto", "all-linear"] | tuple[str, ...] = Field(
        "auto",
        description="Which linear modules get an adapter: 'auto' (the attention query and value projections of "
        "the loaded architecture: q_proj/v_proj, c_attn, query_key_value, qkv_proj, T5's q/v, ...), 'all-linear' "
        "(PEFT's meaning: every linear layer but the output head), or a list of module names or dotted suffixes "
        "(['q_proj', 'v_proj'], ['self_attn.o_proj']).",
    )
    init_seed: int = Field(
        0,
        ge=0,
        description="Seed for the LoRA A-matrix initialisation; public, so every party builds the same initial "
        "adapter.",
    )
    freeze_a: bool = Field(
        False,
        description="FFA-LoRA (Sun et al., ICLR 2024): keep every A at its shared initialisation and train and "
        "aggregate only B. Half the upload, and averaging the B's averages the products B A exactly.",
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, v):
        if isinstance(v, str):
            return v
        if not v:
            raise ValueError("target_modules: give 'auto', 'all-linear' or a non-empty list of module names")
        bad = [t for t in v if not _TARGET_NAME.match(t)]
        if bad:
            raise ValueError(f"target_modules: {bad} are not module names or dotted suffixes (e.g. 'self_attn.q_proj'); "
                             "'auto' and 'all-linear' go alone, not in a list")
        if len(set(v)) != len(v):
            raise ValueError("target_modules: duplicate names")
        return tuple(v)


class ModelSettings(StrictModel):
    """How this member loads the base model on its own hardware (``[model]`` of client.toml).

    None of this changes the adapter layout or the federation's maths, so each member picks its own;
    what every party must share (LoRA rank, targets, FFA-LoRA) is the server's ``[lora]``."""

    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Base-weight dtype: 'auto' is the checkpoint's dtype where the device computes in it "
        "(bf16/fp16 checkpoints stay 16-bit on an accelerator, bf16 stays bf16 on a CPU), else fp32. LoRA "
        "parameters and the optimizer state are always fp32.",
    )
    device: str = Field("auto", description="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    quantization: Literal["none", "nf4", "int8", "auto"] = Field(
        "none", description="Quantized frozen base through bitsandbytes (QLoRA): 'nf4' (4-bit), 'int8', 'none', or "
        "'auto' (none unless max_memory_gb needs it, then int8 or nf4).",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="Recompute each layer's activations in the backward pass (less memory, ~1/3 more "
        "compute). 'auto': off unless max_memory_gb needs it.",
    )
    physical_batch_size: int | None = Field(
        None, ge=1, description="Rows per forward/backward pass: a Poisson-sampled logical batch is processed in "
        "micro-batches of at most this many (accounting unchanged). Default: chosen by max_memory_gb, else the "
        "whole logical batch.",
    )
    max_memory_gb: float | None = Field(
        None, gt=0, description="Memory a training step may use (GiB, on the training device). The member picks "
        "physical batch size, checkpointing and (with quantization = 'auto') quantization to fit, logs its choice, "
        "and refuses with what would fit when nothing does.",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the checkpoint (auto_map in config.json). Off: such a "
        "model is refused. Turn on only for code you have reviewed.",
    )

    processes: int = Field(
        1, ge=1, le=1024, description="Ranks this member trains with (torch.distributed, data-parallel over one "
        "Poisson-sampled logical batch: each rank clips its rows, the clipped sums are added, the noise is added "
        "once, so the privacy accounting is the single process's). One per CUDA device, or per CPU core; "
        "rank 0 is the daemon, which alone talks to the server and writes the ledger.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend for processes > 1: 'auto' (nccl on CUDA, gloo on CPU).",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v


# SGD's step is lr x gradient (a clipped, averaged gradient is small); Adam's is about lr per coordinate.
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "adam": 0.002, "adamw": 0.002}


class LocalTrainingSettings(StrictModel):
    """One client's DP-SGD local-training settings for one round."""

    learning_rate: float = Field(0.05, gt=0, description="Learning rate on the LoRA weights. Default: 0.05 for "
                                 "sgd, 0.002 for adam and adamw (which move every coordinate by about the rate).")
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="What steps on the privatised (clipped, noised) gradient: 'sgd', 'adam' or 'adamw'. "
        "Post-processing of the DP gradient, so the accounting is the same for all three; Adam's per-coordinate "
        "scaling often copes better with DP noise at a small learning rate.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay (0 for sgd and adam).")
    batch_size: int = Field(
        8,
        ge=1,
        description="Expected batch size of Poisson sampling: each example joins a step with probability "
        "q = batch_size / dataset size.",
    )
    epochs: float = Field(
        1.0,
        gt=0,
        description="Local epochs per round: steps = ceil(epochs / q) with q = batch_size / dataset size. "
        "Ignored when 'steps' is set.",
    )
    steps: int | None = Field(None, ge=1, description="Local DP-SGD steps per round; overrides 'epochs' when set.")
    max_seq_len: int = Field(64, ge=8, le=8192, description="Token block length (tokens per training example).")
    clip_norm: float = Field(1.0, gt=0, description="Per-sample gradient L2 clipping norm C.")
    noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="Gaussian noise multiplier sigma (noise std = sigma * C). None: calibrated by the caller's "
        "accountant to the client's budget.",
    )
    clipping: ClippingMode = Field(
        ClippingMode.AUTO,
        description="Per-sample clipping implementation: 'ghost' (memory-efficient), 'hooks', or 'auto'.",
    )
    secure_mode: bool = Field(
        True,
        description="Draw DP noise and Poisson sampling from a CSPRNG (AES-CTR keyed from os.urandom). Turn off "
        "only for tests and benchmarks.",
    )

    @model_validator(mode="before")
    @classmethod
    def _rate_for_the_optimizer(cls, data):
        if isinstance(data, dict) and "learning_rate" not in data and data.get("optimizer") in DEFAULT_LEARNING_RATE:
            data = {**data, "learning_rate": DEFAULT_LEARNING_RATE[data["optimizer"]]}
        return data

    @model_validator(mode="after")
    def _decay_needs_adamw(self) -> "LocalTrainingSettings":
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(f"weight_decay: only optimizer = 'adamw' decays weights (not {self.optimizer!r}); "
                             "remove it or use adamw")
        return self
