"""Aggregation strategies as sums: each client sends one flat vector, the server only ever sees their sum.

Every strategy here is *sum-decomposable*: the server's update is a function of ``sum_i payload_i`` (and the
number of summands), so it runs unchanged under pairwise masking or CKKS. The payload of every strategy ends
with the client's weight ``w_i = min(n_i, max_samples) / max_samples`` in [0, 1] (sample count normalised by a
declared maximum), so the server can form weighted means without learning any ``n_i``.

Bounds. Secure aggregation encodes payloads to fixed point, so every element must lie in a declared range:
the delta (and any control-variate delta) is clipped element-wise to ``[-delta_bound, delta_bound]`` on the
client before weighting. That clip is post-processing of a DP output, so it costs no privacy.
:meth:`Strategy.payload_bound` returns the resulting max ``|element|``; the caller multiplies by the
cohort size to size the fixed-point range.

A strategy that needs one client's individual update (robust aggregation such as median or Krum) sets
``requires_individual_updates = True`` and :func:`check_secure_aggregation` refuses it.

Members of unequal capacity (``heterogeneous``: built with the layout's
:class:`~securefed.heterogeneous.groups.ParameterGroups`). A member may train only part of the adapter
(its top layers, or a lower LoRA rank); it still sends the whole layout, zeros where it trained
nothing, so every upload has one size and the server cannot tell members apart by it. After the core
payload it appends per-group sums (``w_i`` times its 0/1 indicator of trained groups, and what the
strategy needs besides), so the server divides each parameter's sum by the weight of only the members
that trained it. A parameter nobody in the cohort trained keeps its global value. How each strategy
treats untrained parts: FedAvg and FedProx average each parameter over the members that trained it
(FedProx's proximal term cannot move a frozen coordinate anyway); FedNova normalises each parameter
by the step counts of the members that trained it (``tau_eff`` per parameter); SCAFFOLD updates the
server's control variate per parameter over its trainers (the federation size scaled by the
cohort's fraction that trained it) and a member's own ``c_i`` stays put where it did not train.
With every member training everything the result is bit-for-bit the plain strategy's.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from securefed.errors import ConfigError, InvalidInput
from securefed.fsutil import atomic_write
from securefed.heterogeneous.groups import ParameterGroups


class StrategyKind(str, Enum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    SCAFFOLD = "scaffold"
    FEDNOVA = "fednova"


@dataclass(frozen=True)
class ClientPayload:
    """What a client contributes to the sum, plus its new private strategy state (kept by the client)."""

    vector: np.ndarray  # float64, length Strategy.payload_size
    client_state: Any = None  # e.g. SCAFFOLD's c_i; persist it between rounds (see save_vector)


@dataclass(frozen=True)
class ServerUpdate:
    global_vec: np.ndarray  # float32 new global adapter
    server_state: Any = None  # e.g. SCAFFOLD's c; broadcast to clients with the next plan


class Strategy(ABC):
    """Base class. Subclasses define the payload layout and how the server decodes the sum."""

    kind: ClassVar[StrategyKind]
    requires_individual_updates: ClassVar[bool] = False

    # Per-group sums a heterogeneous payload appends (w * indicator first; see _tail_parts).
    tail_parts: ClassVar[int] = 1

    def __init__(self, *, dim: int, max_samples: int, delta_bound: float, server_lr: float = 1.0,
                 heterogeneous: bool = False, groups: ParameterGroups | None = None) -> None:
        if dim < 1:
            raise ConfigError("strategy: dim must be >= 1 (the adapter vector length)")
        if max_samples < 1:
            raise ConfigError("strategy.max_samples: must be >= 1 (declared maximum client dataset size)")
        if not (np.isfinite(delta_bound) and delta_bound > 0):
            raise ConfigError("strategy.delta_bound: must be a finite value > 0")
        if not (np.isfinite(server_lr) and server_lr > 0):
            raise ConfigError("strategy.server_lr: must be a finite value > 0")
        if groups is not None and groups.dim != dim:
            raise ConfigError(f"strategy: the layout's groups cover {groups.dim} values, the adapter has {dim}")
        self.dim = int(dim)
        self.max_samples = int(max_samples)
        self.delta_bound = float(delta_bound)
        self.server_lr = float(server_lr)
        self.heterogeneous = bool(heterogeneous or groups is not None)
        self._groups = groups

    # ----------------------------------------------------------------------------------- shared helpers
    def weight(self, num_samples: int) -> float:
        """w_i in (0, 1]: sample count over the declared maximum (clamped so the bound holds)."""
        if num_samples < 1:
            raise InvalidInput("client has no training samples")
        return min(int(num_samples), self.max_samples) / self.max_samples

    def _check_delta(self, delta: np.ndarray) -> np.ndarray:
        delta = np.asarray(delta)
        if delta.ndim != 1 or delta.shape[0] != self.dim:
            raise InvalidInput(f"update has shape {delta.shape}; expected ({self.dim},) (the adapter length)")
        if not np.all(np.isfinite(delta)):
            raise InvalidInput("update contains NaN or Inf")
        return np.clip(delta.astype(np.float64), -self.delta_bound, self.delta_bound)

    def _check_sum(self, global_vec: np.ndarray, summed: np.ndarray, n_clients: int) -> tuple[np.ndarray, np.ndarray]:
        g = np.asarray(global_vec)
        s = np.asarray(summed, dtype=np.float64)
        if g.ndim != 1 or g.shape[0] != self.dim:
            raise InvalidInput(f"global vector has shape {g.shape}; expected ({self.dim},)")
        if s.ndim != 1 or s.shape[0] != self.payload_size:
            raise InvalidInput(f"summed payload has shape {s.shape}; expected ({self.payload_size},)")
        if not np.all(np.isfinite(s)):
            raise InvalidInput("summed payload contains NaN or Inf")
        if n_clients < 1:
            raise InvalidInput("n_clients must be >= 1")
        if np.max(np.abs(s)) > n_clients * self.payload_bound() * (1 + 1e-9) + 1e-9:
            raise InvalidInput("summed payload exceeds n_clients * payload_bound: wrong cohort size or a decoding error")
        return g.astype(np.float64), s

    @staticmethod
    def _total_weight(sw: float) -> float:
        if not sw > 0:
            raise InvalidInput("summed client weight is 0: no client contributed")
        return float(sw)

    # ----------------------------------------------------------------------------------- partial members
    @property
    def groups(self) -> ParameterGroups:
        if self._groups is None:
            raise ConfigError("strategy: heterogeneous aggregation needs the adapter layout (its parameter groups)")
        return self._groups

    @property
    def tail_size(self) -> int:
        return self.tail_parts * self.groups.size if self.heterogeneous else 0

    @property
    def payload_size(self) -> int:
        """Length of the flat payload vector: the strategy's core, then the per-group sums."""
        return self.core_size + self.tail_size

    def _trained(self, trained: np.ndarray | None) -> np.ndarray | None:
        """The member's 0/1 indicator over the groups (all ones when it trained everything); None when
        the federation does not aggregate per group, where a partial member is refused."""
        if not self.heterogeneous:
            if trained is not None and not np.all(np.asarray(trained) == 1):
                raise InvalidInput("this federation aggregates whole adapters only ([strategy] heterogeneous = "
                                   "false): train every layer at the full rank")
            return None
        return self.groups.check_indicator(np.ones(self.groups.size) if trained is None else trained)

    def _masked(self, values: np.ndarray, trained: np.ndarray | None) -> np.ndarray:
        """Zeros where the member trained nothing: what it sends there says nothing and adds nothing."""
        return values if trained is None else values * self.groups.expand(trained)

    def _tail(self, w: float, trained: np.ndarray | None, *extra: np.ndarray) -> list[np.ndarray]:
        return [] if trained is None else [w * trained, *extra]

    def _element_weights(self, s: np.ndarray, total: float, part: int = 0) -> np.ndarray | float:
        """Per element, the summed weight of the members that trained it (``total`` when not heterogeneous)."""
        if not self.heterogeneous:
            return total
        g = self.groups.size
        start = self.core_size + part * g
        return self.groups.expand(s[start : start + g])

    def _ratio(self, numerator: np.ndarray, weights: np.ndarray | float) -> np.ndarray:
        """numerator / weights, and 0 where no member trained the element (its weight sum decodes to ~0:
        a trained one is at least 1 / max_samples)."""
        if np.isscalar(weights):
            return numerator / weights
        trained = weights > 0.5 / self.max_samples
        return np.divide(numerator, weights, out=np.zeros_like(numerator), where=trained)

    # ----------------------------------------------------------------------------------- interface
    @property
    @abstractmethod
    def core_size(self) -> int:
        """Length of the strategy's own payload (the whole payload without heterogeneous group sums)."""

    @abstractmethod
    def payload_bound(self) -> float:
        """Max |element| of one client's payload."""

    def client_hooks(self, client_state: Any = None, server_state: Any = None):
        """A ``GradientCorrection`` for :func:`securefed.training.train_local`, or None."""
        return None

    def initial_client_state(self) -> Any:
        return None

    def initial_server_state(self) -> Any:
        return None

    @abstractmethod
    def client_payload(self, result, *, client_state: Any = None, server_state: Any = None,
                       trained: np.ndarray | None = None) -> ClientPayload:
        """Build the payload from a ``LocalTrainResult`` (uses delta, num_samples, steps, learning_rate).
        ``trained``: the member's 0/1 indicator over ``groups`` (None: it trained everything)."""

    @abstractmethod
    def server_apply(self, global_vec: np.ndarray, summed_payload: np.ndarray, n_clients: int,
                     server_state: Any = None) -> ServerUpdate:
        """New global adapter (and server state) from the *sum* of the cohort's payloads."""


def check_secure_aggregation(strategy: Strategy, secure_aggregation: bool) -> None:
    """Refuse a strategy that needs individual updates when the server may only see sums."""
    if secure_aggregation and strategy.requires_individual_updates:
        raise ConfigError(
            f"strategy {strategy.kind.value!r} needs individual client updates, which secure aggregation hides; "
            "choose fedavg, fedprox, scaffold or fednova"
        )


def save_vector(path: str | Path, vec: np.ndarray) -> None:
    """Atomically write a float32 vector as .npy (no pickle): for client/server strategy state."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.asarray(vec, dtype=np.float32)), allow_pickle=False)
    atomic_write(path, buf.getvalue())


def load_vector(path: str | Path, dim: int) -> np.ndarray:
    """Read a vector written by :func:`save_vector`; checks dtype, shape and finiteness."""
    try:
        arr = np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: strategy state file not found") from None
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"{path}: not a valid .npy vector ({exc})") from None
    if arr.dtype != np.float32 or arr.shape != (dim,):
        raise InvalidInput(f"{path}: expected float32 vector of length {dim}, got {arr.dtype} {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{path}: vector contains NaN or Inf")
    return arr
