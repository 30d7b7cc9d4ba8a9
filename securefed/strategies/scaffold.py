"""SCAFFOLD (Karimireddy et al. 2020), option II control variates, as sums.

Client i keeps its control variate ``c_i`` (persisted by the caller); the server keeps ``c`` and sends it with
the plan. Local steps use the corrected gradient ``g + c - c_i`` (added after DP noise: it does not depend on
this round's data). After K local steps with learning rate lr:

    c_i+ = c_i - c + (x - y_i) / (K lr) = c_i - c - delta_i / (K lr)

Payload (length 2*dim + 1): ``[w_i * clip(delta_i), clip(c_i+ - c_i), w_i]``; the client stores
``c_i + clip(c_i+ - c_i)`` so its state matches what the server summed.
Server: ``x <- x + eta_g * sum(w_i delta_i) / sum(w_i)``, ``c <- c + sum(delta c_i) / N`` with N the total
number of clients in the federation (``total_clients``; full participation when it equals the cohort).
Heterogeneous: ``[w_i * m_i * clip(delta_i), m_i * clip(dc_i), w_i, w_i * t_i, t_i]``; a member's ``c_i``
moves only where it trained, and the server updates ``c`` per parameter over its trainers: divided by
``N * (cohort members that trained it) / (cohort size)``, the federation size scaled by the cohort's
fraction, so ``c`` stays the mean control variate of those who train that parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.errors import ConfigError, InvalidInput
from securefed.strategies.base import ClientPayload, ServerUpdate, Strategy, StrategyKind


@dataclass(frozen=True)
class ControlCorrection:
    """Adds the constant c - c_i to every local gradient."""

    diff: object  # torch tensor, float32, length dim

    def correction(self, current, initial):
        return self.diff


class Scaffold(Strategy):
    kind = StrategyKind.SCAFFOLD

    def __init__(self, *, control_bound: float = 1.0, total_clients: int | None = None, **kw) -> None:
        super().__init__(**kw)
        if not (np.isfinite(control_bound) and control_bound > 0):
            raise ConfigError("strategy.control_bound: must be a finite value > 0")
        if total_clients is not None and total_clients < 1:
            raise ConfigError("strategy.total_clients: must be >= 1")
        self.control_bound = float(control_bound)
        self.total_clients = total_clients

    tail_parts = 2

    @property
    def core_size(self) -> int:
        return 2 * self.dim + 1

    def payload_bound(self) -> float:
        return max(self.delta_bound, self.control_bound, 1.0)

    def initial_client_state(self) -> np.ndarray:
        return np.zeros(self.dim, dtype=np.float32)

    def initial_server_state(self) -> np.ndarray:
        return np.zeros(self.dim, dtype=np.float32)

    def _state(self, v, what: str) -> np.ndarray:
        if v is None:
            return np.zeros(self.dim, dtype=np.float32)
        v = np.asarray(v)
        if v.shape != (self.dim,) or not np.all(np.isfinite(v)):
            raise InvalidInput(f"SCAFFOLD {what} must be a finite vector of length {self.dim}")
        return v.astype(np.float32)

    def client_hooks(self, client_state=None, server_state=None) -> ControlCorrection:
        import torch  # only the member's hook needs torch; the coordinator loads strategies without it

        c = self._state(server_state, "server control variate c")
        ci = self._state(client_state, "client control variate c_i")
        return ControlCorrection(torch.from_numpy((c - ci).astype(np.float32)))

    def client_payload(self, result, *, client_state=None, server_state=None, trained=None) -> ClientPayload:
        w = self.weight(result.num_samples)
        t = self._trained(trained)
        d = self._masked(self._check_delta(result.delta), t)
        c = self._state(server_state, "server control variate c").astype(np.float64)
        ci = self._state(client_state, "client control variate c_i").astype(np.float64)
        if result.steps < 1 or not result.learning_rate > 0:
            raise InvalidInput("SCAFFOLD needs steps >= 1 and learning_rate > 0 from local training")
        # Uses the unclipped (but DP) delta, as in the paper; the clip below bounds what is sent.
        raw = np.asarray(result.delta, dtype=np.float64)
        ci_new = ci - c - raw / (result.steps * result.learning_rate)
        dc = self._masked(np.clip(ci_new - ci, -self.control_bound, self.control_bound), t)
        tail = self._tail(w, t, t)
        return ClientPayload(np.concatenate([w * d, dc, [w], *tail]), client_state=(ci + dc).astype(np.float32))

    def server_apply(self, global_vec, summed_payload, n_clients, server_state=None) -> ServerUpdate:
        g, s = self._check_sum(global_vec, summed_payload, n_clients)
        c = self._state(server_state, "server control variate c").astype(np.float64)
        sw = self._total_weight(s[2 * self.dim])
        n_total = self.total_clients if self.total_clients is not None else n_clients
        if n_clients > n_total:
            raise InvalidInput(f"{n_clients} clients summed but total_clients is {n_total}")
        new = g + self.server_lr * self._ratio(s[: self.dim], self._element_weights(s, sw))
        dc = s[self.dim : 2 * self.dim]
        if self.heterogeneous:
            # members of the cohort that trained each element (a count: 1 / max_samples scale does not apply)
            trainers = self._element_weights(s, n_clients, part=1)
            share = np.where(trainers > 0.5, n_total * trainers / n_clients, 0.0)
            c_new = c + np.divide(dc, share, out=np.zeros_like(dc), where=share > 0)
        else:
            c_new = c + dc / n_total
        return ServerUpdate(new.astype(np.float32), c_new.astype(np.float32))
