"""Global-adapter checkpoints: safetensors files written atomically (temp file, fsync, rename, fsync dir).

A checkpoint is the *global bundle*: the flat float32 adapter vector, its layout (JSON), the
federation settings every client must apply identically (LoRA settings, strategy settings, as
canonical JSON), and optionally the strategy's server state (SCAFFOLD's control variate). Its
digest is what the plan binds into the session, so a client trains from exactly the adapter and
settings every other client of the round saw. ``adapter_digest`` is computed over the layout, the
settings and the little-endian float32 bytes, so it does not depend on the file's framing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.errors import InvalidMessage, SecureFedError
from securefed.fsutil import atomic_write

TENSOR_NAME = "adapter"
STATE_TENSOR = "server_state"
DIGEST_DOMAIN = b"securefed/global-bundle/v1\x00"


class CheckpointError(SecureFedError):
    """A checkpoint file is missing, unreadable or does not match its digest."""


def adapter_digest(vector: np.ndarray, layout_json: str, settings_json: str = "",
                   server_state: np.ndarray | None = None) -> str:
    """SHA-256 (hex) over domain and the length-prefixed layout, settings, vector and state bytes."""
    h = hashlib.sha256()
    h.update(DIGEST_DOMAIN)
    parts = [layout_json.encode("utf-8"), settings_json.encode("utf-8"),
             np.ascontiguousarray(vector, dtype="<f4").tobytes(),
             b"" if server_state is None else np.ascontiguousarray(server_state, dtype="<f4").tobytes()]
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


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


def encode_bundle(vector: np.ndarray, layout_json: str, settings_json: str = "",
                  server_state: np.ndarray | None = None, extra: dict[str, str] | None = None) -> tuple[bytes, str]:
    """(safetensors bytes, digest) of a global bundle."""
    from safetensors.numpy import save

    v = np.ascontiguousarray(vector, dtype=np.float32)
    if v.ndim != 1:
        raise InvalidMessage(f"adapter vector must be 1-D, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidMessage("adapter vector has NaN/Inf; refusing to checkpoint it")
    tensors = {TENSOR_NAME: v}
    if server_state is not None:
        tensors[STATE_TENSOR] = np.ascontiguousarray(server_state, dtype=np.float32)
    digest = adapter_digest(v, layout_json, settings_json, server_state)
    meta = {"layout": layout_json, "settings": settings_json, "digest": digest, "format": "securefed-bundle/v1"}
    meta.update(extra or {})
    return save(tensors, metadata=meta), digest


def write_adapter_file(path: Path, vector: np.ndarray, layout_json: str, extra: dict[str, str] | None = None, *,
                       settings_json: str = "", server_state: np.ndarray | None = None) -> str:
    """Write the bundle to ``path`` atomically (temp file, fsync, rename, fsync dir); return the digest."""
    data, digest = encode_bundle(vector, layout_json, settings_json, server_state, extra)
    atomic_write(path, data)
    return digest


@dataclass(frozen=True)
class Bundle:
    vector: np.ndarray
    layout_json: str
    settings_json: str
    server_state: np.ndarray | None
    digest: str
    meta: dict[str, str]


def decode_bundle(data: bytes, source: str = "<bundle>") -> Bundle:
    """Parse and verify bundle bytes (from disk or the wire); CheckpointError on any mismatch."""
    from safetensors.numpy import load

    try:
        n = int.from_bytes(data[:8], "little")
        if n <= 0 or n > len(data) - 8 or n > 1 << 24:
            raise ValueError("bad header length")
        header = json.loads(data[8 : 8 + n])
        meta = dict(header.get("__metadata__") or {})
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt data
        raise CheckpointError(f"{source}: unreadable adapter bundle ({exc.__class__.__name__})") from None
    vec = tensors.get(TENSOR_NAME)
    state = tensors.get(STATE_TENSOR)
    layout, settings, digest = meta.get("layout"), meta.get("settings", ""), meta.get("digest")
    if layout is None or digest is None or vec is None or vec.dtype != np.float32 or vec.ndim != 1:
        raise CheckpointError(f"{source}: not a securefed adapter bundle")
    if set(tensors) - {TENSOR_NAME, STATE_TENSOR}:
        raise CheckpointError(f"{source}: unexpected tensors in the adapter bundle")
    if state is not None and (state.dtype != np.float32 or state.ndim != 1):
        raise CheckpointError(f"{source}: malformed server state")
    if adapter_digest(vec, layout, settings, state) != digest:
        raise CheckpointError(f"{source}: contents do not match the recorded digest")
    vec.setflags(write=False)
    return Bundle(vec, layout, settings, state, digest, meta)


def read_adapter_file(path: Path) -> Bundle:
    """Read and verify a bundle file written by ``write_adapter_file``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    return decode_bundle(data, str(path))


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
        digest = write_adapter_file(path, vector, layout_json, {"round": str(round)}, settings_json=settings_json,
                                    server_state=server_state)
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
