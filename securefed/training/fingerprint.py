"""The base-model fingerprint: one SHA-256 that every party computes over the same checkpoint.

The adapter layout only says which shapes LoRA has; two checkpoints of the same architecture (Llama,
Mistral and Qwen at equal sizes, or one with a single weight changed) share a layout but are different
models. The fingerprint hashes what the model *is*: the architecture part of ``config.json``
(canonical JSON, bookkeeping keys dropped) and every tensor of the safetensors files in a canonical
order - sorted by name; for each: name, dtype, shape, byte length, bytes. It is read straight from
the files (the safetensors header gives each tensor's byte range), streamed in blocks: no torch, no
model in memory, so the server computes it as cheaply as a member.

Computing it reads every byte once (a 7B bf16 checkpoint: ~14 GB), so it is cached - in the party's
own state directory, never in the model directory, which may be read-only, shared, or a user's that
we must not write into. A cache entry names every file with its size, mtime, ctime and inode, and is
ignored when any of them changed, or when a file was modified within ``RACY_NS`` of the computation
(a same-tick rewrite that leaves the timestamps equal; git's "racily clean" problem).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from pathlib import Path
from typing import Callable

from securefed.errors import ModelError
from securefed.fsutil import atomic_write

DOMAIN = b"securefed/base-model-fingerprint/v1\x00"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# config.json keys that record how a checkpoint was saved, not what the model computes (the tensors'
# dtypes are hashed with the tensors).
VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache"})
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_BLOCK = 8 << 20
_MAX_HEADER = 100 << 20
RACY_NS = 2_000_000_000
CACHE_VERSION = 1

ProgressFn = Callable[[int, int], None]  # (bytes hashed, total bytes)


def weight_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's safetensors files: the shards its index names, or ``model.safetensors``.

    One-line ``ModelError`` when there are none (only ``pytorch_model.bin``: a pickle we neither hash
    nor load) or the index names a shard that is missing."""
    d = Path(model_dir)
    index = d / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index}: unreadable shard index; re-save the model with save_pretrained") from None
        missing = [s for s in shards if not (d / s).is_file() or "/" in s or s.startswith(".")]
        if missing:
            raise ModelError(f"{d}: shard(s) {missing[:3]} named in {INDEX} are missing; copy the complete checkpoint")
        return [d / s for s in shards]
    if (d / SINGLE).is_file():
        return [d / SINGLE]
    if any(d.glob("*.bin")) or any(d.glob("*.pt")):
        raise ModelError(f"{d}: weights are not in safetensors format; re-save them with "
                         "save_pretrained(dir, safe_serialization=True)")
    raise ModelError(f"{d}: no model weights ({SINGLE} or {INDEX}); point the base model path at a "
                     "save_pretrained directory")


def has_weights(model_dir: str | Path) -> bool:
    d = Path(model_dir)
    return (d / INDEX).is_file() or (d / SINGLE).is_file()


def canonical_config(model_dir: str | Path) -> bytes:
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: not found; point the base model path at a save_pretrained directory") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the model config ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: not a JSON object")
    kept = {k: v for k, v in raw.items() if k not in VOLATILE_CONFIG_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _header(path: Path) -> tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]]:
    """(data start, {name: (dtype, shape, begin, end)}) from a safetensors header, validated against the
    file's size: a truncated or padded file is refused here, before anything is hashed."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError("header length out of range")
            meta = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc}); the checkpoint is damaged or "
                         "incomplete") from None
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    end_max = 0
    for name, t in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(t["dtype"]), tuple(int(x) for x in t["shape"])
            begin, end = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: malformed safetensors entry for {name!r}") from None
        if dtype not in _ITEMSIZE or any(x < 0 for x in shape) or not 0 <= begin <= end:
            raise ModelError(f"{path}: malformed safetensors entry for {name!r}")
        if end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise ModelError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {list(shape)} {dtype}")
        tensors[name] = (dtype, shape, begin, end)
        end_max = max(end_max, end)
    if 8 + n + end_max != size:
        raise ModelError(f"{path}: file is {size} bytes but its header describes {8 + n + end_max}; the "
                         "checkpoint is truncated or damaged (copy it again)")
    return 8 + n, tensors


def compute_fingerprint(model_dir: str | Path, progress: ProgressFn | None = None) -> str:
    """Hash the checkpoint (config + every tensor in canonical order), streaming its files."""
    d = Path(model_dir)
    files = weight_files(d)
    where: dict[str, tuple[Path, int, tuple[str, tuple[int, ...], int, int]]] = {}
    for path in files:
        start, tensors = _header(path)
        for name, info in tensors.items():
            if name in where:
                raise ModelError(f"{d}: tensor {name!r} appears in two weight files; the checkpoint is inconsistent")
            where[name] = (path, start, info)
    if not where:
        raise ModelError(f"{d}: the weight files hold no tensors")
    total = sum(info[3] - info[2] for _, _, info in where.values())
    h = hashlib.sha256(DOMAIN)
    cfg = canonical_config(d)
    h.update(len(cfg).to_bytes(8, "big") + cfg)
    h.update(len(where).to_bytes(8, "big"))
    done = 0
    handles: dict[Path, object] = {}
    try:
        for name in sorted(where):
            path, start, (dtype, shape, begin, end) = where[name]
            enc = name.encode("utf-8")
            h.update(len(enc).to_bytes(8, "big") + enc + dtype.encode().ljust(8, b"\0"))
            h.update(len(shape).to_bytes(8, "big") + b"".join(x.to_bytes(8, "big") for x in shape))
            h.update((end - begin).to_bytes(8, "big"))
            f = handles.get(path) or handles.setdefault(path, open(path, "rb"))
            f.seek(start + begin)  # type: ignore[attr-defined]
            left = end - begin
            while left:
                block = f.read(min(_BLOCK, left))  # type: ignore[attr-defined]
                if not block:
                    raise ModelError(f"{path}: ended early; the checkpoint is truncated (copy it again)")
                h.update(block)
                left -= len(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
    except OSError as exc:
        raise ModelError(f"{d}: cannot read the weights ({exc.strerror})") from None
    finally:
        for f in handles.values():
            f.close()  # type: ignore[attr-defined]
    return h.hexdigest()


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _stats(model_dir: Path) -> dict[str, list[int]]:
    files = [model_dir / "config.json", *weight_files(model_dir)]
    if (model_dir / INDEX).is_file():
        files.append(model_dir / INDEX)
    return {p.name: _stat(p) for p in files}


def cache_path(cache_dir: str | Path, model_dir: str | Path) -> Path:
    key = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"base-fingerprint-{key}.json"


def base_fingerprint(model_dir: str | Path, *, cache_dir: str | Path | None = None,
                     progress: ProgressFn | None = None) -> str:
    """The checkpoint's fingerprint (hex), from ``cache_dir``'s entry when no file changed since."""
    d = Path(model_dir)
    if cache_dir is None:
        return compute_fingerprint(d, progress)
    entry = cache_path(cache_dir, d)
    before = _stats(d)
    try:
        cached = json.loads(entry.read_text())
        if (cached.get("version") == CACHE_VERSION and cached.get("model_dir") == str(d.resolve())
                and cached.get("files") == before):
            return str(cached["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no entry, or an unreadable one: recompute
    started = time.time_ns()
    fp = compute_fingerprint(d, progress)
    # Cache only what is certainly the hashed content: unchanged during the computation, and not
    # modified so recently that a later same-tick rewrite could keep the same timestamps.
    racy = any(max(s[1], s[2]) >= started - RACY_NS for s in before.values())
    if _stats(d) == before and not racy:
        try:
            atomic_write(entry, json.dumps({"version": CACHE_VERSION, "model_dir": str(d.resolve()), "files": before,
                                            "fingerprint": fp}, sort_keys=True).encode())
        except OSError:
            pass  # a read-only state dir only costs the next start another pass
    return fp


def short(fingerprint: str) -> str:
    """The first 16 hex digits, for messages."""
    return fingerprint[:16]
