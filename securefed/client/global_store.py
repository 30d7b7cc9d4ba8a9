"""What the member keeps of the federation's results: the latest global adapter and its strategy state.

``state_dir/global/adapter.safetensors`` (+ ``ROUND``) is the newest verified global bundle, written
atomically so the member can use the model locally and, after a restart, skip a second download;
``state_dir/strategy_client_state.npy`` is SCAFFOLD's control variate c_i, advanced only when a
round this member took part in was committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from securefed.protocol.bundle import Bundle, write_adapter_file
from securefed.strategies.base import save_vector


class GlobalStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "global"
        self.client_state_path = state_dir / "strategy_client_state.npy"
        self.latest: Bundle | None = None

    @property
    def adapter_path(self) -> Path:
        return self.dir / "adapter.safetensors"

    def keep(self, bundle: Bundle, rnd: int) -> None:
        write_adapter_file(self.adapter_path, bundle.vector, bundle.layout_json, {"round": str(rnd)},
                           settings_json=bundle.settings_json, server_state=bundle.server_state)
        (self.dir / "ROUND").write_text(f"{rnd} {bundle.digest}\n")
        self.latest = bundle

    def latest_round(self) -> int:
        """The round of the adapter on disk (-1 when there is none)."""
        try:
            return int((self.dir / "ROUND").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return -1

    def save_client_state(self, state: np.ndarray) -> None:
        save_vector(self.client_state_path, state)
