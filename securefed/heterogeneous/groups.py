"""Parameter groups of the federation's adapter layout: the unit in which a member says what it trained.

A group is one (transformer layer, LoRA rank slot) pair: slot ``j`` of a module is row ``j`` of its
``lora_A`` and column ``j`` of its ``lora_B``, and every adapted module of one layer shares the layer's
groups. A member that trains the top ``k`` layers at rank ``r' <= r`` trains exactly the groups
``(layer, j)`` with the layer among the top ``k`` and ``j < r'``; its indicator over the groups (0/1)
travels beside its update under the same secure aggregation, so the server learns, per group, only the
summed weight of the members that trained it. Both parties derive the groups from the layout alone
(names and shapes), so nothing about them is sent.

A layer is a module path up to its first numeric component (``model.layers.12``, ``transformer.h.3``,
``encoder.block.0``); layers are ordered as they first appear in the layout (the model's module order:
bottom to top for a decoder), and "the top k" are the last k. A module outside any numbered stack is
its own layer. Pure numpy: the coordinator uses it without torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from securefed.errors import InvalidInput

_LAYER = re.compile(r"^(.*?\.\d+)(?:\.|$)")
_A, _B = ".lora_A.", ".lora_B."


def module_of(name: str) -> str:
    """The adapted module of a LoRA tensor name (``...q_proj.lora_A.default.weight`` -> ``...q_proj``)."""
    for marker in (_A, _B):
        if marker in name:
            return name.split(marker, 1)[0]
    raise InvalidInput(f"adapter layout: {name} is not a LoRA A/B matrix")


def layer_of(name: str) -> str:
    """The layer a LoRA tensor belongs to (see the module docstring)."""
    module = module_of(name)
    m = _LAYER.match(module)
    return m.group(1) if m else module


@dataclass(frozen=True)
class ParameterGroups:
    """The groups of one layout; ``element_group[i]`` is the group of element ``i`` of the flat adapter."""

    layers: tuple[str, ...]  # bottom first
    rank: int  # slots per layer: the largest LoRA rank in the layout
    element_group: np.ndarray = field(repr=False, compare=False)  # int64, length = adapter size

    @property
    def size(self) -> int:
        """Number of groups (the length of an indicator)."""
        return len(self.layers) * self.rank

    @property
    def dim(self) -> int:
        return int(self.element_group.size)

    @classmethod
    def from_layout(cls, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> "ParameterGroups":
        layers: dict[str, int] = {}
        ranks = []
        for name, shape in zip(names, shapes):
            layers.setdefault(layer_of(name), len(layers))
            if len(shape) != 2:
                raise InvalidInput(f"adapter layout: {name} has shape {tuple(shape)}; LoRA matrices are 2-D")
            ranks.append(int(shape[0]) if _A in name else int(shape[1]))
        rank = max(ranks, default=0)
        parts = []
        for name, shape, r in zip(names, shapes, ranks):
            base = layers[layer_of(name)] * rank
            rows, cols = int(shape[0]), int(shape[1])
            slot = (np.repeat(np.arange(r), cols) if _A in name else np.tile(np.arange(r), rows))
            parts.append(base + slot)
        groups = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        if groups.size != sum(math.prod(s) for s in shapes):
            raise InvalidInput("adapter layout: tensor sizes do not add up")  # pragma: no cover - defensive
        groups.setflags(write=False)
        return cls(tuple(layers), rank, groups)

    @classmethod
    def from_layout_json(cls, text: str) -> "ParameterGroups":
        """From ``AdapterLayout.to_json()`` (parsed here so that the coordinator needs no torch)."""
        try:
            tensors = json.loads(text)["tensors"]
            names = [str(t["name"]) for t in tensors]
            shapes = [tuple(int(d) for d in t["shape"]) for t in tensors]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"adapter layout: malformed JSON ({exc.__class__.__name__})") from None
        return cls.from_layout(names, shapes)

    def indicator(self, *, top_layers: int | None = None, rank: int | None = None) -> np.ndarray:
        """0/1 per group (float64): the groups a member training the top ``top_layers`` layers (None: all)
        at rank ``rank`` (None: the full rank) trains."""
        k = len(self.layers) if top_layers is None else int(top_layers)
        r = self.rank if rank is None else int(rank)
        if not 1 <= k <= len(self.layers):
            raise InvalidInput(f"top layers {k}: the adapter spans {len(self.layers)} layers")
        if not 1 <= r <= self.rank:
            raise InvalidInput(f"rank {r}: the federation's LoRA rank is {self.rank}")
        grid = np.zeros((len(self.layers), self.rank))
        grid[len(self.layers) - k:, :r] = 1.0
        return grid.reshape(-1)

    def check_indicator(self, indicator: np.ndarray) -> np.ndarray:
        """``indicator`` as float64 0/1 of the right length, else ``InvalidInput``."""
        ind = np.asarray(indicator, dtype=np.float64)
        if ind.shape != (self.size,) or not np.all((ind == 0.0) | (ind == 1.0)):
            raise InvalidInput(f"trained-groups indicator must be 0/1 of length {self.size}")
        if not ind.any():
            raise InvalidInput("trained-groups indicator is all zeros: the member trained nothing")
        return ind

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        """A value per group -> the same value at every element of that group."""
        return np.asarray(per_group)[self.element_group]
