"""The control messages between rank 0 (the member's daemon) and its worker ranks: one JSON line each
over the worker's stdin and stdout, validated on receipt. Tensors (rows, the adapter, gradient sums)
travel over torch.distributed; nothing is pickled.

Rank 0 -> worker: ``WorkerSetup`` once, then ``TrainCommand`` per attempt, then ``Stop``.
Worker -> rank 0: ``{"joining": rank}`` before the process-group rendezvous, ``{"ready": rank}`` once
its model is loaded, ``{"done": attempt}`` after each attempt's training.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from securefed.config import StrictModel
from securefed.errors import InvalidMessage, ModelError
from securefed.heterogeneous.config import CapacitySettings
from securefed.strategies import ControlCorrection, ProximalCorrection
from securefed.training.config import LocalTrainingSettings, LoraSettings, ModelSettings


class PlanChoice(StrictModel):
    """What rank 0's memory plan chose (every rank loads the model the same way)."""

    physical_batch_size: int = Field(ge=1)
    gradient_checkpointing: bool
    quantization: str
    trained_layers: int | None = None


class WorkerSetup(StrictModel):
    cmd: Literal["setup"] = "setup"
    rank: int = Field(ge=1)
    world: int = Field(ge=2)
    backend: Literal["gloo", "nccl"]
    store_path: str  # a FileStore in a 0700 directory of rank 0's: no network listener for the rendezvous
    device: str
    threads: int = Field(ge=1)
    timeout_s: float = Field(gt=0)
    model_dir: str
    model: ModelSettings
    lora: LoraSettings
    plan: PlanChoice
    capacity: CapacitySettings
    layout_json: str


class CorrectionSpec(StrictModel):
    """A strategy's data-independent gradient correction: FedProx' mu, or SCAFFOLD's c - c_i (whose
    vector follows the adapter broadcast)."""

    kind: Literal["none", "proximal", "control"] = "none"
    mu: float = 0.0


class TrainCommand(StrictModel):
    cmd: Literal["train"] = "train"
    attempt: int = Field(ge=0)
    training: LocalTrainingSettings
    sigma: float = Field(ge=0)
    steps: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    correction: CorrectionSpec = CorrectionSpec()


class Stop(StrictModel):
    cmd: Literal["stop"] = "stop"


def encode(msg: StrictModel | dict) -> bytes:
    body = msg if isinstance(msg, dict) else msg.model_dump(mode="json")
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")


def decode_command(line: bytes | str) -> WorkerSetup | TrainCommand | Stop:
    try:
        raw: Any = json.loads(line)
        kind = raw.get("cmd") if isinstance(raw, dict) else None
        model = {"setup": WorkerSetup, "train": TrainCommand, "stop": Stop}[kind]
        return model.model_validate(raw)
    except (ValueError, KeyError, ValidationError) as exc:
        raise InvalidMessage(f"rank control message: not a command ({exc.__class__.__name__})") from None


def describe_correction(correction) -> tuple[CorrectionSpec, np.ndarray | None]:
    """The spec of a strategy's correction and, for SCAFFOLD, its vector (sent over the process group)."""
    if correction is None:
        return CorrectionSpec(), None
    if isinstance(correction, ProximalCorrection):
        return CorrectionSpec(kind="proximal", mu=correction.mu), None
    if isinstance(correction, ControlCorrection):
        return CorrectionSpec(kind="control"), np.asarray(correction.diff, dtype=np.float32)
    raise ModelError(f"strategy correction {type(correction).__name__} cannot run on several ranks; use "
                     "[model] processes = 1")


def build_correction(spec: CorrectionSpec, vector=None):
    """The correction a worker applies (the inverse of :func:`describe_correction`)."""
    if spec.kind == "proximal":
        return ProximalCorrection(spec.mu)
    if spec.kind == "control":
        return ControlCorrection(vector)
    return None
