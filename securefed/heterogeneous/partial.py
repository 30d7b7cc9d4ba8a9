"""A member's model with only its part of the federation's adapter trainable.

* **Top k layers**: the LoRA tensors of the other layers are frozen (``requires_grad = False``), so
  backpropagation stops at the lowest trained layer and the layers below keep no activations for it
  (the memory this buys is what :mod:`securefed.training.memory` plans with). The frozen tensors still
  hold the global values: the member's forward pass is the federation's current model.
* **Rank r' < r**: every trained LoRA tensor keeps its full shape, and a 0/1 gradient mask keeps the
  slots ``j >= r'`` (rows of A, columns of B) at their global values; the per-sample gradients are masked
  before clipping, so those slots spend none of the member's clipping budget.

The flat vector the member trains is then a sub-layout of the federation's; :meth:`embed` places its
update back into the whole layout, zeros elsewhere, and :attr:`indicator` says which groups it trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from securefed.errors import ModelError
from securefed.heterogeneous.config import CapacitySettings
from securefed.heterogeneous.groups import ParameterGroups, layer_of
from securefed.training.adapter import AdapterLayout, adapter_layout
from securefed.training.config import LoraSettings, ModelSettings
from securefed.training.dp import enable_gradient_checkpointing
from securefed.training.memory import MemoryPlan
from securefed.training.model import LoadedModel, load_model


@dataclass(frozen=True)
class Capacity:
    """What one member trains: the top ``top_layers`` layers (None: all) at rank ``rank`` (None: full)."""

    top_layers: int | None = None
    rank: int | None = None

    @property
    def whole(self) -> bool:
        return self.top_layers is None and self.rank is None

    def describe(self, groups: ParameterGroups) -> str:
        layers = "every layer" if self.top_layers is None else f"the top {self.top_layers} of {len(groups.layers)} layers"
        rank = f"rank {groups.rank}" if self.rank is None else f"rank {self.rank} of {groups.rank}"
        return f"{layers} at {rank}"

    def clamp(self, groups: ParameterGroups) -> "Capacity":
        """None where the capacity covers the whole layout (so that ``whole`` says so)."""
        k = None if self.top_layers is None or self.top_layers >= len(groups.layers) else self.top_layers
        r = None if self.rank is None or self.rank >= groups.rank else self.rank
        return Capacity(k, r)


class PartialAdapter:
    """Applies a ``Capacity`` to a peft model whose adapter has the federation's ``layout``."""

    def __init__(self, model, layout: AdapterLayout, capacity: Capacity) -> None:
        self.model = model
        self.layout = layout
        self.groups = ParameterGroups.from_layout(layout.names, layout.shapes)
        self.capacity = capacity.clamp(self.groups)
        self.indicator = self.groups.indicator(top_layers=self.capacity.top_layers, rank=self.capacity.rank)
        trained_layers = set(self.groups.layers[len(self.groups.layers) - (self.capacity.top_layers
                                                                           or len(self.groups.layers)):])
        params = dict(model.named_parameters())
        missing = [n for n in layout.names if n not in params]
        if missing:
            raise ModelError(f"the model has no adapter tensor {missing[0]}: use the federation's LoRA settings")
        self._params = params
        for name in layout.names:
            params[name].requires_grad_(layer_of(name) in trained_layers)
        self.local = adapter_layout(model)  # the trainable part, in the model's parameter order
        if self.capacity.top_layers is not None:
            # Checkpointing marks the embeddings' output as needing a gradient (for reentrant checkpoints):
            # that would make every frozen layer below record its graph. Non-reentrant checkpoints (ours)
            # and a plain forward need no such mark.
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if hasattr(base, "disable_input_require_grads"):
                base.disable_input_require_grads()  # no-op without the hooks
        offsets = np.concatenate([[0], np.cumsum(layout.sizes)])
        self._fed_slices = {n: slice(int(offsets[i]), int(offsets[i + 1])) for i, n in enumerate(layout.names)}
        # where each element of the trained part sits in the federation's layout
        self.index = torch.from_numpy(np.concatenate(
            [np.arange(self._fed_slices[n].start, self._fed_slices[n].stop) for n in self.local.names]))

    def correction(self, inner):
        """A strategy's gradient correction (written for the whole layout) for the trained part, or None."""
        return None if inner is None else RestrictedCorrection(inner, self.index, self.layout.total_size)

    def grad_masks(self) -> list[torch.Tensor | None] | None:
        """One mask per trainable tensor (model order) for ``DPTrainer(grad_mask=...)``; None at full rank."""
        r = self.capacity.rank
        if r is None:
            return None
        masks: list[torch.Tensor | None] = []
        for name in self.local.names:
            p = self._params[name]
            if ".lora_A." in name:
                m = torch.zeros(p.shape[0], 1, dtype=p.dtype, device=p.device)
                m[:r] = 1
            else:
                m = torch.zeros(1, p.shape[1], dtype=p.dtype, device=p.device)
                m[:, :r] = 1
            masks.append(m)
        return masks

    def load(self, vector: np.ndarray) -> None:
        """The whole global adapter into the model, trained and frozen tensors alike."""
        vec = np.asarray(vector, dtype=np.float32)
        if vec.shape != (self.layout.total_size,):
            raise ModelError(f"adapter vector has {vec.size} values; the layout {self.layout.total_size}")
        with torch.no_grad():
            for name, shape in zip(self.layout.names, self.layout.shapes):
                p = self._params[name]
                p.copy_(torch.from_numpy(vec[self._fed_slices[name]].copy()).view(shape).to(p.dtype))

    def embed(self, local: np.ndarray) -> np.ndarray:
        """The member's update (its trainable sub-layout) in the federation's layout, zeros elsewhere."""
        local = np.asarray(local, dtype=np.float32)
        if local.shape != (self.local.total_size,):
            raise ModelError(f"local update has {local.size} values; the trained part {self.local.total_size}")
        out = np.zeros(self.layout.total_size, dtype=np.float32)
        offset = 0
        for name, size in zip(self.local.names, self.local.sizes):
            out[self._fed_slices[name]] = local[offset : offset + size]
            offset += size
        return out


class RestrictedCorrection:
    """``inner`` (FedProx' proximal term, SCAFFOLD's c - c_i) on the whole layout, seen from the trained
    part: the untrained coordinates never move, so they enter as zero differences."""

    def __init__(self, inner, index: torch.Tensor, dim: int) -> None:
        self.inner, self.index, self.dim = inner, index, dim

    def _whole(self, local: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.dim, dtype=local.dtype, device=local.device)
        out[self.index.to(local.device)] = local
        return out

    def correction(self, current, initial):
        out = self.inner.correction(self._whole(current), self._whole(initial))
        return None if out is None else out[self.index.to(out.device)]


def partial_adapter(model, layout_json: str, settings: CapacitySettings, plan: MemoryPlan | None = None,
                    ) -> PartialAdapter | None:
    """The member's ``[capacity]`` (with the memory plan's choice of layers for 'auto') applied to a
    freshly loaded model; None when it trains the whole adapter."""
    if not settings.partial:
        return None
    layout = AdapterLayout.from_json(layout_json)
    if adapter_layout(model) != layout:
        raise ModelError(f"adapter layout mismatch (model {adapter_layout(model).hexdigest()[:16]} vs the federation's "
                         f"{layout.hexdigest()[:16]}): use the federation's base model and LoRA settings")
    layers = settings.layers if isinstance(settings.layers, int) else plan.trained_layers if plan else None
    capacity = Capacity(layers, settings.rank)
    if capacity.clamp(ParameterGroups.from_layout(layout.names, layout.shapes)).whole:
        return None
    return PartialAdapter(model, layout, capacity)


def load_for_training(model_dir, settings: ModelSettings, lora: LoraSettings, plan, capacity: CapacitySettings,
                      layout_json: str) -> tuple[LoadedModel, PartialAdapter | None]:
    """The base model with LoRA as ``plan`` (a ``MemoryPlan``, or rank 0's choice sent to a worker) says,
    and this member's part of the adapter trainable: the same on every rank of a member."""
    loaded = load_model(model_dir, lora=lora, settings=settings, quantization=plan.quantization)
    if plan.gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model)
    return loaded, partial_adapter(loaded.model, layout_json, capacity, plan)
