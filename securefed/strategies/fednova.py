"""FedNova (Wang et al. 2020): normalised averaging for heterogeneous numbers of local steps.

For plain local SGD the normalising factor is a_i = tau_i (local steps). With p_i = n_i / sum n:

    x <- x + eta_g * tau_eff * sum_i p_i * delta_i / tau_i,   tau_eff = sum_i p_i * tau_i

Payload (length dim + 2): ``[w_i * clip(delta_i) / tau_i, w_i * tau_i / tau_max, w_i]`` with ``tau_max`` the
declared maximum number of local steps (so every element stays in [-delta_bound, delta_bound] or [0, 1]).
Since p_i = w_i / sum w (when no sample count exceeds max_samples), the server recovers both sums exactly.
Heterogeneous: the payload also carries ``w_i * t_i`` and ``w_i * tau_i / tau_max * t_i`` per group, and
each parameter is normalised over the members that trained it (its own ``p_i`` and ``tau_eff``).
"""

from __future__ import annotations

import numpy as np

from securefed.errors import ConfigError, InvalidInput
from securefed.strategies.base import ClientPayload, ServerUpdate, Strategy, StrategyKind


class FedNova(Strategy):
    kind = StrategyKind.FEDNOVA

    def __init__(self, *, tau_max: int, **kw) -> None:
        super().__init__(**kw)
        if tau_max < 1:
            raise ConfigError("strategy.tau_max: the declared maximum local steps must be >= 1")
        self.tau_max = int(tau_max)

    tail_parts = 2

    @property
    def core_size(self) -> int:
        return self.dim + 2

    def payload_bound(self) -> float:
        return max(self.delta_bound, 1.0)

    def client_payload(self, result, *, client_state=None, server_state=None, trained=None) -> ClientPayload:
        tau = int(result.steps)
        if not 1 <= tau <= self.tau_max:
            raise InvalidInput(f"local steps {tau} outside 1..tau_max={self.tau_max}; lower steps or raise tau_max")
        w = self.weight(result.num_samples)
        t = self._trained(trained)
        d = self._masked(self._check_delta(result.delta), t)
        scaled_tau = w * tau / self.tau_max
        tail = self._tail(w, t, None if t is None else scaled_tau * t)
        return ClientPayload(np.concatenate([w * d / tau, [scaled_tau, w], *tail]))

    def server_apply(self, global_vec, summed_payload, n_clients, server_state=None) -> ServerUpdate:
        g, s = self._check_sum(global_vec, summed_payload, n_clients)
        sw = self._total_weight(s[self.dim + 1])
        weights = self._element_weights(s, sw)
        tau_eff = self._ratio(self._element_weights(s, s[self.dim], part=1) * self.tau_max, weights)
        new = g + self.server_lr * tau_eff * self._ratio(s[: self.dim], weights)
        return ServerUpdate(new.astype(np.float32), server_state)
