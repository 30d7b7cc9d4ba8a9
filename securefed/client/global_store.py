"""What the member keeps of the federation's results: the latest global adapter and its strategy state.

``state_dir/global/adapter.safetensors`` is the newest verified global bundle (its metadata names its
round), written atomically so the member can use the model locally and, after a restart, skip a
second download; ``state_dir/strategy_client_state.npy`` is SCAFFOLD's control variate c_i, advanced
only when a round this member took part in was committed.

A write the disk refuses (full, read-only, quota) is one ``StateError`` line naming the path; what
is on disk stays the previous consistent file (each write is one atomic rename), and the verified
bundle is still kept in memory, so the daemon goes on serving rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from securefed.errors import CheckpointError, StateError
from securefed.logs import get_logger, log
from securefed.protocol.bundle import Bundle, read_adapter_file, write_adapter_file
from securefed.strategies.base import save_vector

logger = get_logger("client")


class GlobalStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "global"
        self.client_state_path = state_dir / "strategy_client_state.npy"
        self.latest: Bundle | None = None
        self._latest_round = -1

    @property
    def adapter_path(self) -> Path:
        return self.dir / "adapter.safetensors"

    def keep(self, bundle: Bundle, rnd: int) -> None:
        """Hold ``bundle`` (round ``rnd``) as the latest; ``StateError`` if the disk refuses its copy."""
        self.latest, self._latest_round = bundle, rnd
        try:
            write_adapter_file(self.adapter_path, bundle.vector, bundle.layout_json, {"round": str(rnd)},
                               settings_json=bundle.settings_json, server_state=bundle.server_state)
        except OSError as exc:
            raise StateError(_refused(self.adapter_path, f"the global adapter of round {rnd}", exc)) from None

    def latest_round(self) -> int:
        """The round of the latest adapter (held, or on disk after a restart); -1 when there is none."""
        if self._latest_round >= 0:
            return self._latest_round
        try:
            return int(read_adapter_file(self.adapter_path).meta.get("round", -1))
        except (CheckpointError, OSError, ValueError):
            return -1

    def save_client_state(self, state: np.ndarray) -> None:
        try:
            save_vector(self.client_state_path, state)
        except OSError as exc:
            raise StateError(_refused(self.client_state_path, "the strategy's client state", exc)) from None


def _refused(path: Path, what: str, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if exc.errno is not None:
        why += f" (errno {exc.errno})"
    return f"{path}: could not keep {what}: {why}; the previous file stays as it was: free space in {path.parent}"


def keep_or_log(write: Callable[..., None], *args: object) -> None:
    """Run one of the store's writes; a disk that refuses it is one ERROR line and the daemon goes on
    (the previous file stays, the value is held in memory)."""
    try:
        write(*args)
    except StateError as exc:
        log(logger, "disk write failed", level=logging.ERROR, error=str(exc))
