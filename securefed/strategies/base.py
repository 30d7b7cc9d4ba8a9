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

    def __init__(self, *, dim: int, max_samples: int, delta_bound: float, server_lr: float = 1.0) -> None:
        if dim < 1:
            raise ConfigError("strategy: dim must be >= 1 (the adapter vector length)")
        if max_samples < 1:
            raise ConfigError("strategy.max_samples: must be >= 1 (declared maximum client dataset size)")
        if not (np.isfinite(delta_bound) and delta_bound > 0):
            raise ConfigError("strategy.delta_bound: must be a finite value > 0")
        if not (np.isfinite(server_lr) and server_lr > 0):
            raise ConfigError("strategy.server_lr: must be a finite value > 0")
        self.dim = int(dim)
        self.max_samples = int(max_samples)
        self.delta_bound = float(delta_bound)
        self.server_lr = float(server_lr)

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

    # ----------------------------------------------------------------------------------- interface
    @property
    @abstractmethod
    def payload_size(self) -> int:
        """Length of the flat payload vector."""

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
    def client_payload(self, result, *, client_state: Any = None, server_state: Any = None) -> ClientPayload:
        """Build the payload from a ``LocalTrainResult`` (uses delta, num_samples, steps, learning_rate)."""

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
