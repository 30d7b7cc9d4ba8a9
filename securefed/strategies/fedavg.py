"""FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020).

Payload (length dim + 1): ``[w_i * clip(delta_i), w_i]``.
Server: ``x <- x + eta_g * sum_i(w_i delta_i) / sum_i(w_i)``.
Heterogeneous (members training part of the adapter): ``[w_i * m_i * clip(delta_i), w_i, w_i * t_i]`` with
``t_i`` the member's 0/1 trained groups and ``m_i`` their mask per element; each element is divided by
the summed weight of the members that trained it (see ``strategies.base``).
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
    def core_size(self) -> int:
        return self.dim + 1

    def payload_bound(self) -> float:
        return max(self.delta_bound, 1.0)

    def client_payload(self, result, *, client_state: Any = None, server_state: Any = None,
                       trained: np.ndarray | None = None) -> ClientPayload:
        w = self.weight(result.num_samples)
        t = self._trained(trained)
        d = self._masked(self._check_delta(result.delta), t)
        return ClientPayload(np.concatenate([w * d, [w], *self._tail(w, t)]))

    def server_apply(self, global_vec, summed_payload, n_clients, server_state=None) -> ServerUpdate:
        g, s = self._check_sum(global_vec, summed_payload, n_clients)
        sw = self._total_weight(s[self.dim])
        new = g + self.server_lr * self._ratio(s[: self.dim], self._element_weights(s, sw))
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
