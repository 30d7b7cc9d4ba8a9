"""FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020).

Payload (length dim + 1): ``[w_i * clip(delta_i), w_i]``.
Server: ``x <- x + eta_g * sum_i(w_i delta_i) / sum_i(w_i)``.
FedProx aggregates exactly like FedAvg; its proximal term ``mu/2 ||y - x||^2`` acts on the client, as the
gradient correction ``mu (y - x)`` added after DP noise (it does not depend on the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.errors import ConfigError
from securefed.strategies.base import ClientPayload, ServerUpdate, Strategy, StrategyKind


class FedAvg(Strategy):
    kind = StrategyKind.FEDAVG

    @property
    def payload_size(self) -> int:
        return self.dim + 1

    def payload_bound(self) -> float:
        return max(self.delta_bound, 1.0)

    def client_payload(self, result, *, client_state: Any = None, server_state: Any = None) -> ClientPayload:
        w = self.weight(result.num_samples)
        d = self._check_delta(result.delta)
        return ClientPayload(np.concatenate([w * d, [w]]))

    def server_apply(self, global_vec, summed_payload, n_clients, server_state=None) -> ServerUpdate:
        g, s = self._check_sum(global_vec, summed_payload, n_clients)
        sw = self._total_weight(s[-1])
        new = g + self.server_lr * s[: self.dim] / sw
        return ServerUpdate(new.astype(np.float32), server_state)


@dataclass(frozen=True)
class ProximalCorrection:
    """Gradient of (mu/2)||w - w_global||^2 at the current weights."""

    mu: float

    def correction(self, current, initial):
        return self.mu * (current - initial)


class FedProx(FedAvg):
    kind = StrategyKind.FEDPROX

    def __init__(self, *, mu: float = 0.01, **kw) -> None:
        super().__init__(**kw)
        if not (np.isfinite(mu) and mu >= 0):
            raise ConfigError("strategy.mu: the FedProx proximal weight must be a finite value >= 0")
        self.mu = float(mu)

    def client_hooks(self, client_state: Any = None, server_state: Any = None) -> ProximalCorrection:
        return ProximalCorrection(self.mu)
