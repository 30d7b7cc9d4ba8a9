"""The global bundle: the format in which the coordinator publishes, and members receive, the adapter.

One safetensors file (or the same bytes on the wire, written atomically to disk: temp file, fsync,
rename, fsync dir). A bundle is the flat float32 adapter vector, its layout (JSON), the
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
from safetensors.numpy import load, save

from securefed.errors import CheckpointError, InvalidMessage
from securefed.fsutil import SHARED_MODE, atomic_write

TENSOR_NAME = "adapter"
STATE_TENSOR = "server_state"
DIGEST_DOMAIN = b"securefed/global-bundle/v1\x00"


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


def encode_bundle(vector: np.ndarray, layout_json: str, settings_json: str = "",
                  server_state: np.ndarray | None = None, extra: dict[str, str] | None = None) -> tuple[bytes, str]:
    """(safetensors bytes, digest) of a global bundle."""
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
    atomic_write(path, data, mode=SHARED_MODE)  # the federation's model: meant to be shared
    return digest


@dataclass(frozen=True)
class Bundle:
    vector: np.ndarray
    layout_json: str
    settings_json: str
    server_state: np.ndarray | None
    digest: str
    meta: dict[str, str]


def decode_bundle(data: bytes | bytearray, source: str = "<bundle>") -> Bundle:
    """Parse and verify bundle bytes (from disk or the wire); CheckpointError on any mismatch."""
    data = bytes(data)  # safetensors reads bytes only (a download arrives as a bytearray); no copy for bytes
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


