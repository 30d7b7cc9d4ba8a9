"""Global-adapter checkpoints: safetensors files written atomically (temp file, fsync, rename, fsync dir).

A checkpoint is the flat float32 adapter vector plus its layout (JSON, in the safetensors metadata)
and a digest. The digest is what the plan binds into the session, so a client trains from exactly
the adapter every other client of the round saw. ``adapter_digest`` is computed over the layout
JSON and the little-endian float32 bytes, so it does not depend on the file's framing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.errors import InvalidMessage, SecureFedError

TENSOR_NAME = "adapter"
DIGEST_DOMAIN = b"securefed/adapter/v1\x00"


class CheckpointError(SecureFedError):
    """A checkpoint file is missing, unreadable or does not match its digest."""


def adapter_digest(vector: np.ndarray, layout_json: str) -> str:
    """SHA-256 (hex) over domain || len(layout) || layout || float32-LE vector bytes."""
    v = np.ascontiguousarray(vector, dtype="<f4")
    lay = layout_json.encode("utf-8")
    h = hashlib.sha256()
    h.update(DIGEST_DOMAIN)
    h.update(len(lay).to_bytes(8, "big"))
    h.update(lay)
    h.update(v.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    round: int
    vector: np.ndarray  # float32, read-only
    layout_json: str
    digest: str
    path: Path


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_adapter_file(path: Path, vector: np.ndarray, layout_json: str, extra: dict[str, str] | None = None) -> str:
    """Write ``vector`` + layout to ``path`` atomically; return the digest."""
    from safetensors.numpy import save

    v = np.ascontiguousarray(vector, dtype=np.float32)
    if v.ndim != 1:
        raise InvalidMessage(f"adapter vector must be 1-D, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidMessage("adapter vector has NaN/Inf; refusing to checkpoint it")
    digest = adapter_digest(v, layout_json)
    meta = {"layout": layout_json, "digest": digest, "format": "securefed-adapter/v1"}
    meta.update(extra or {})
    data = save({TENSOR_NAME: v}, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return digest


def read_adapter_file(path: Path) -> tuple[np.ndarray, str, str, dict[str, str]]:
    """Read and verify a file written by ``write_adapter_file``: (vector, layout_json, digest, metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            vec = f.get_tensor(TENSOR_NAME)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    layout = meta.get("layout")
    digest = meta.get("digest")
    if layout is None or digest is None or vec.dtype != np.float32 or vec.ndim != 1:
        raise CheckpointError(f"{path}: not a securefed adapter checkpoint")
    if adapter_digest(vec, layout) != digest:
        raise CheckpointError(f"{path}: contents do not match the recorded digest")
    vec.setflags(write=False)
    return vec, layout, digest, meta


class CheckpointStore:
    """``<dir>/global-r000003.safetensors``: the global adapter after round 3 (round 0 = initial)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, round: int) -> Path:
        return self.dir / f"global-r{round:06d}.safetensors"

    def save(self, round: int, vector: np.ndarray, layout_json: str) -> Checkpoint:
        path = self.path_for(round)
        digest = write_adapter_file(path, vector, layout_json, {"round": str(round)})
        vec = np.array(vector, dtype=np.float32)
        vec.setflags(write=False)
        return Checkpoint(round, vec, layout_json, digest, path)

    def load(self, round: int, expected_digest: str | None = None) -> Checkpoint:
        path = self.path_for(round)
        vec, layout, digest, meta = read_adapter_file(path)
        if meta.get("round") != str(round):
            raise CheckpointError(f"{path}: records round {meta.get('round')}, expected {round}")
        if expected_digest is not None and digest != expected_digest:
            raise CheckpointError(f"{path}: digest differs from the round log; refusing to resume from it")
        return Checkpoint(round, vec, layout, digest, path)

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

    def export_layout(self, layout_json: str) -> dict:
        return json.loads(layout_json)
