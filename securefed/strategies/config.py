"""Strategy settings (part of the server's round plan; every client must see the same values)."""

from __future__ import annotations

from pydantic import Field, model_serializer

from securefed.config import StrictModel
from securefed.strategies.base import StrategyKind


class StrategySettings(StrictModel):
    kind: StrategyKind = Field(StrategyKind.FEDAVG, description="Aggregation strategy: fedavg, fedprox, scaffold, fednova.")
    max_samples: int = Field(
        100_000, ge=1, description="Declared maximum client dataset size; weights are n_i / max_samples (clamped)."
    )
    delta_bound: float = Field(
        1.0, gt=0, description="Element-wise clip of each client's adapter delta before aggregation (fixed-point range)."
    )
    server_lr: float = Field(1.0, gt=0, description="Server learning rate eta_g applied to the aggregated update.")
    mu: float = Field(0.01, ge=0, description="FedProx proximal weight mu (fedprox only).")
    control_bound: float = Field(1.0, gt=0, description="Element-wise clip of SCAFFOLD control-variate deltas.")
    total_clients: int | None = Field(
        None, ge=1, description="SCAFFOLD: number of clients in the federation (default: the cohort size)."
    )
    tau_max: int = Field(1000, ge=1, description="FedNova: declared maximum local steps per round.")
    heterogeneous: bool = Field(
        False, description="Members may train part of the adapter (their top layers, or a lower LoRA rank: "
        "[capacity] in client.toml). Every payload then carries per-group sums of who trained what (under the "
        "same secure aggregation), and each parameter is averaged over the members that trained it.",
    )

    @model_serializer(mode="wrap")
    def _omit_default_heterogeneous(self, handler):
        # Left out while false: the settings JSON of federations started before the key existed stays the
        # same (it is bound into every bundle digest and checked when a coordinator resumes).
        out = handler(self)
        if not self.heterogeneous:
            out.pop("heterogeneous", None)
        return out
