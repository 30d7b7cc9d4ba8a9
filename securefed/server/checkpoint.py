"""The coordinator's checkpoint store: one global bundle file per completed round, written atomically.

``<dir>/global-r000003.safetensors`` is the global adapter after round 3 (round 0 = initial). The
file format and its digest are the shared bundle format (``securefed.protocol.bundle``); this
module only decides where the files live, which round a file holds and what to discard after a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.errors import CheckpointError
from securefed.protocol.bundle import read_adapter_file, write_adapter_file
from securefed.storage import STATE_DISK_FULL, disk_write_error


@dataclass(frozen=True)
class Checkpoint:
    round: int
    vector: np.ndarray  # float32, read-only
    layout_json: str
    settings_json: str
    server_state: np.ndarray | None
    digest: str
    path: Path

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json) if self.settings_json else {}


class CheckpointStore:
    """``<dir>/global-r000003.safetensors``: the global adapter after round 3 (round 0 = initial)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, round: int) -> Path:
        return self.dir / f"global-r{round:06d}.safetensors"

    def save(self, round: int, vector: np.ndarray, layout_json: str, settings_json: str = "",
             server_state: np.ndarray | None = None) -> Checkpoint:
        path = self.path_for(round)
        try:
            digest = write_adapter_file(path, vector, layout_json, {"round": str(round)}, settings_json=settings_json,
                                        server_state=server_state)
        except OSError as exc:
            full = disk_write_error(exc, path, STATE_DISK_FULL)
            if full is None:
                raise
            raise full from None
        vec = np.array(vector, dtype=np.float32)
        vec.setflags(write=False)
        st = None if server_state is None else np.array(server_state, dtype=np.float32)
        return Checkpoint(round, vec, layout_json, settings_json, st, digest, path)

    def load(self, round: int, expected_digest: str | None = None) -> Checkpoint:
        path = self.path_for(round)
        b = read_adapter_file(path)
        if b.meta.get("round") != str(round):
            raise CheckpointError(f"{path}: records round {b.meta.get('round')}, expected {round}")
        if expected_digest is not None and b.digest != expected_digest:
            raise CheckpointError(f"{path}: digest differs from the round log; refusing to resume from it")
        return Checkpoint(round, b.vector, b.layout_json, b.settings_json, b.server_state, b.digest, path)

    def discard_after(self, round: int) -> list[Path]:
        """Remove checkpoints newer than ``round`` (written by an attempt that never committed)."""
        removed = []
        for p in sorted(self.dir.glob("global-r*.safetensors")):
            try:
                r = int(p.stem.split("-r", 1)[1])
            except ValueError:
                continue
            if r > round:
                p.unlink()
                removed.append(p)
        for p in self.dir.glob(".global-r*.tmp-*"):
            p.unlink(missing_ok=True)
        return removed
