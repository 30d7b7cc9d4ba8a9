"""Settings for LoRA and private local training (validated pydantic models).

These are runtime settings of one client; the privacy budget itself lives in ``securefed.privacy``.
The noise multiplier is usually *not* set here: the client's accountant calibrates it to the budget
over the whole planned run and passes it to :func:`securefed.training.dp.train_local`.
"""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from securefed.config import StrictModel


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
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "v_proj"),
        min_length=1,
        description="Names of the linear modules that get an adapter (e.g. q_proj, v_proj for Llama).",
    )
    init_seed: int = Field(
        0,
        ge=0,
        description="Seed for the LoRA A-matrix initialisation; public, so every party builds the same initial "
        "adapter.",
    )


class LocalTrainingSettings(StrictModel):
    """One client's DP-SGD local-training settings for one round."""

    learning_rate: float = Field(0.05, gt=0, description="SGD learning rate on the LoRA weights.")
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
