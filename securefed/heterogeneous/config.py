"""``[capacity]`` of client.toml: how much of the federation's adapter this member trains.

Only the member's own choice; the layout it uploads stays the federation's whole one. The federation
must allow partial members (``[strategy] heterogeneous = true`` on the server), or a member that would
train less than the whole adapter declines the plan, saying so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from securefed.config import StrictModel


class CapacitySettings(StrictModel):
    layers: Literal["all", "auto"] | int = Field(
        "all", description="How many transformer layers (the ones nearest the output) this member trains LoRA in: "
        "'all', a number k, or 'auto': all that [model] max_memory_gb allows (the memory planner tries the whole "
        "adapter first, then ever fewer top layers). Layers below the lowest trained one keep no activations.",
    )
    rank: int | None = Field(
        None, ge=1, le=1024, description="Train only the first `rank` slots of each LoRA matrix (HetLoRA-style "
        "heterogeneous rank; the rest keep the global values). Default: the federation's full rank. Saves little "
        "memory (the forward pass uses the whole adapter); it concentrates this member's clipping budget.",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("use 'all', 'auto' or a number of layers >= 1")
        return v

    @property
    def partial(self) -> bool:
        """Whether this setting may train less than the whole adapter."""
        return self.layers != "all" or self.rank is not None
