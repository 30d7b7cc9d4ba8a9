"""Federated aggregation strategies, all expressible as sums (so they run under secure aggregation).

    strategy = make_strategy(settings, dim=layout.total_size)
    hooks = strategy.client_hooks(client_state, server_state)          # -> train_local(strategy_state=hooks)
    payload = strategy.client_payload(result, client_state=..., server_state=...)  # flat float64 vector
    update = strategy.server_apply(global_vec, sum_of_payloads, n_clients, server_state)
"""

from __future__ import annotations

from securefed.heterogeneous.groups import ParameterGroups
from securefed.strategies.base import (
    ClientPayload,
    ServerUpdate,
    Strategy,
    StrategyKind,
    check_secure_aggregation,
    load_vector,
    save_vector,
)
from securefed.strategies.config import StrategySettings
from securefed.strategies.fedavg import FedAvg, FedProx, ProximalCorrection
from securefed.strategies.fednova import FedNova
from securefed.strategies.scaffold import ControlCorrection, Scaffold

STRATEGIES: dict[StrategyKind, type[Strategy]] = {
    StrategyKind.FEDAVG: FedAvg,
    StrategyKind.FEDPROX: FedProx,
    StrategyKind.SCAFFOLD: Scaffold,
    StrategyKind.FEDNOVA: FedNova,
}


def make_strategy(settings: StrategySettings, *, dim: int, layout_json: str | None = None) -> Strategy:
    """Instantiate the configured strategy for an adapter of ``dim`` elements. A heterogeneous one needs
    the layout (``AdapterLayout.to_json()``) for its payload size; without it, only its bound and checks."""
    groups = ParameterGroups.from_layout_json(layout_json) if settings.heterogeneous and layout_json else None
    common = dict(dim=dim, max_samples=settings.max_samples, delta_bound=settings.delta_bound,
                  server_lr=settings.server_lr, heterogeneous=settings.heterogeneous, groups=groups)
    if settings.kind is StrategyKind.FEDPROX:
        return FedProx(mu=settings.mu, **common)
    if settings.kind is StrategyKind.SCAFFOLD:
        return Scaffold(control_bound=settings.control_bound, total_clients=settings.total_clients, **common)
    if settings.kind is StrategyKind.FEDNOVA:
        return FedNova(tau_max=settings.tau_max, **common)
    return FedAvg(**common)


__all__ = [
    "ClientPayload", "ControlCorrection", "FedAvg", "FedNova", "FedProx", "ProximalCorrection", "STRATEGIES",
    "Scaffold", "ServerUpdate", "Strategy", "StrategyKind", "StrategySettings", "check_secure_aggregation",
    "load_vector", "make_strategy", "save_vector",
]
