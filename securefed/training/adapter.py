"""The LoRA adapter as one flat float32 vector, plus the layout needed to load it back.

Secure aggregation masks, sums and decodes flat vectors, so the adapter travels as one
``np.ndarray[float32]``. The :class:`AdapterLayout` (parameter names, shapes, dtypes, in a fixed order)
is what both sides must agree on; its SHA-256 over canonical JSON goes into the round plan so a client
with a different base model or LoRA configuration is caught before it sends anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from securefed.errors import InvalidInput, ModelError

_DTYPE = "float32"


@dataclass(frozen=True, slots=True)
class AdapterLayout:
    """Ordered (name, shape, dtype) of every trainable adapter tensor; the flat vector concatenates them."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.shapes) == len(self.dtypes)):
            raise InvalidInput("adapter layout: names, shapes and dtypes must have the same length")
        if len(set(self.names)) != len(self.names):
            raise InvalidInput("adapter layout: duplicate parameter names")
        for name, shape, dt in zip(self.names, self.shapes, self.dtypes):
            if dt != _DTYPE:
                raise InvalidInput(f"adapter layout: {name} has dtype {dt}; only float32 adapters are supported")
            if any((not isinstance(d, int)) or d < 0 for d in shape):
                raise InvalidInput(f"adapter layout: {name} has an invalid shape {shape}")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def total_size(self) -> int:
        """Number of float32 elements in the flat vector."""
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return 4 * self.total_size

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the input of :meth:`digest`."""
        return json.dumps(
            {
                "version": 1,
                "tensors": [
                    {"name": n, "shape": list(s), "dtype": d}
                    for n, s, d in zip(self.names, self.shapes, self.dtypes)
                ],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "AdapterLayout":
        try:
            data = json.loads(text)
            if data.get("version") != 1:
                raise InvalidInput("adapter layout: unsupported version (expected 1)")
            tensors = data["tensors"]
            return cls(
                names=tuple(str(t["name"]) for t in tensors),
                shapes=tuple(tuple(int(d) for d in t["shape"]) for t in tensors),
                dtypes=tuple(str(t["dtype"]) for t in tensors),
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
            raise InvalidInput(f"adapter layout: malformed JSON ({exc.__class__.__name__})") from None

    def digest(self) -> bytes:
        """Stable SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode("utf-8")).digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def _adapter_params(model) -> list[tuple[str, "object"]]:
    """Trainable parameters in ``named_parameters`` order (module registration order: deterministic)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ModelError("model has no trainable (adapter) parameters; attach LoRA with load_model(..., lora=...)")
    return params


def adapter_layout(model) -> AdapterLayout:
    params = _adapter_params(model)
    for n, p in params:
        if str(p.dtype) != "torch.float32":
            raise ModelError(f"adapter parameter {n} is {p.dtype}; load the model in float32")
    return AdapterLayout(
        names=tuple(n for n, _ in params),
        shapes=tuple(tuple(int(d) for d in p.shape) for _, p in params),
        dtypes=tuple(_DTYPE for _ in params),
    )


def adapter_to_vector(model) -> tuple[np.ndarray, AdapterLayout]:
    """Concatenate the trainable adapter tensors into one new float32 vector (a copy)."""
    layout = adapter_layout(model)
    with torch.no_grad():
        parts = [p.detach().to("cpu").reshape(-1) for _, p in _adapter_params(model)]
        vec = torch.cat(parts).numpy().astype(np.float32, copy=True)
    return vec, layout


def load_adapter_vector(model, vec: np.ndarray, layout: AdapterLayout) -> None:
    """Write ``vec`` into the model's adapter tensors, bit-exactly. The layout must match the model's."""
    mine = adapter_layout(model)
    if mine != layout:
        raise ModelError(
            f"adapter layout mismatch (model {mine.hexdigest()[:16]} vs vector {layout.hexdigest()[:16]}): "
            "use the same base model and LoRA settings (rank, target_modules) as the federation"
        )
    vec = np.asarray(vec)
    if vec.dtype != np.float32 or vec.ndim != 1 or vec.shape[0] != layout.total_size:
        raise InvalidInput(
            f"adapter vector must be 1-D float32 of length {layout.total_size}, got {vec.dtype} {vec.shape}"
        )
    if not np.all(np.isfinite(vec)):
        raise InvalidInput("adapter vector contains NaN or Inf")
    src = torch.from_numpy(vec.copy())
    offset = 0
    with torch.no_grad():
        for (_, p), size in zip(_adapter_params(model), layout.sizes):
            p.copy_(src[offset : offset + size].view_as(p))
            offset += size


# ---------------------------------------------------------------------------------------------------------
# The initial adapter: a pure function of (parameter names, shapes, public seed)

INIT_DOMAIN = b"securefed/lora-init/v1\x00"


def lora_init_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The initial value of one LoRA tensor: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's default,
    kaiming-uniform with a = sqrt(5)), B = 0, so the initial adapter changes nothing.

    The uniforms come from SHAKE-256 over (seed, name): the same bits on every machine, whatever its
    torch build, device or quantization, and computable by a server that never builds the model. The
    seed is public (the initial adapter is not a secret)."""
    if ".lora_B." in name:
        return np.zeros(shape, dtype=np.float32)
    if ".lora_A." not in name or len(shape) != 2:
        raise ModelError(f"{name}: not a LoRA A/B matrix; only LoRA adapters are supported")
    n = math.prod(shape)
    bound = 1.0 / math.sqrt(shape[1])
    raw = hashlib.shake_256(INIT_DOMAIN + str(int(seed)).encode() + b"\x00" + name.encode()).digest(4 * n)
    u = (np.frombuffer(raw, dtype="<u4").astype(np.float64) + 0.5) / 2.0**32  # (0, 1)
    return ((2.0 * u - 1.0) * bound).astype(np.float32).reshape(shape)


def initial_vector(layout: AdapterLayout, seed: int) -> np.ndarray:
    """The round-0 flat adapter for ``layout`` (no model needed)."""
    parts = [lora_init_values(n, s, seed).reshape(-1) for n, s in zip(layout.names, layout.shapes)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def init_adapter(model, seed: int) -> None:
    """Set every LoRA tensor of ``model`` (trainable or frozen, as with FFA-LoRA's A) to its initial value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                if p.device.type == "meta":
                    continue  # a shape-only model (layout on the meta device) has no values to set
                p.copy_(torch.from_numpy(lora_init_values(name, tuple(p.shape), seed)).to(p.dtype))
