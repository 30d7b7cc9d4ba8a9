"""A member's SEAL work on several cores: encryption and the checked decryption, ciphertext range by range.

TenSEAL's SEAL bindings hold the GIL for the whole of every call (its pybind11 bindings release it
nowhere), so threads would run one SEAL call at a time. ``ParallelClientContext`` therefore hands
contiguous ranges of ciphertexts to worker *processes*, each holding its own copy of the federation's
context, and joins their results in order: the same wire format, the same checks, one flooding-noise draw
over the whole vector in the member's own process. Work below ``MIN_CHUNKS_PER_WORKER`` ciphertexts per
worker stays in process (a worker round trip costs more than it saves), and so does everything when one
worker is asked for; the pool starts on first use and lives as long as the context.

Workers are started with ``spawn`` (the member daemon runs gRPC threads, which ``fork`` would copy in an
unusable state). The secret context reaches them through the pool's own pipe, never through a file.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from securefed.crypto import prg
from securefed.fsutil import read_secret
from securefed.he.keys import ClientContext, _resolve
from securefed.he.params import CkksParams
from securefed.he.vector import EncryptedSum, EncryptedVector, SEED_RECORD_BYTES

log = logging.getLogger(__name__)

MIN_CORES = 4
MIN_CHUNKS_PER_WORKER = 64  # 256K parameters at N = 4096: below that, IPC costs more than a second core gives

_worker_ctx: ClientContext | None = None  # in a worker process: its copy of the context


def default_workers() -> int:
    """``SECUREFED_CKKS_WORKERS`` if set (1 = no worker processes), else every core this process may use
    from ``MIN_CORES`` cores on, else 1: on two shared cores the round trips cost about what the second
    core gives (bench/ckks.py: encryption 1.3x faster, decryption 0.8-0.9x)."""
    if os.environ.get("SECUREFED_CKKS_WORKERS", "").strip():
        return prg.default_workers("SECUREFED_CKKS_WORKERS")
    cores = prg.usable_cores()
    return cores if cores >= MIN_CORES else 1


def _start_worker(secret: bytes, params_name: str) -> None:
    global _worker_ctx
    _worker_ctx = ClientContext.from_secret_bytes(secret, params_name)


def _encrypt_range(values: np.ndarray) -> tuple[bytes, bytes]:
    assert _worker_ctx is not None
    enc = _worker_ctx.encrypt(values)
    return enc.c0, enc.seeds


def _decode_range(c0: bytes, seeds: tuple[bytes, ...], length: int, summands: int | None) -> np.ndarray:
    assert _worker_ctx is not None
    total = EncryptedSum.from_parts(_worker_ctx.params, c0, seeds, length)
    return _worker_ctx._decode_checked(total, summands)


class ParallelClientContext(ClientContext):
    """``ClientContext`` whose ``encrypt`` and decryption run on ``workers`` processes for large vectors."""

    __slots__ = ("_workers", "_pool")

    def __init__(self, ctx, params: CkksParams, workers: int | None = None) -> None:
        super().__init__(ctx, params)
        self._workers = default_workers() if workers is None else max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None

    @classmethod
    def load(cls, path: str | Path, params: CkksParams | str, workers: int | None = None) -> "ParallelClientContext":
        """Like ``keys.load_secret_context`` (the file must be readable by its owner only)."""
        params = _resolve(params)
        base = ClientContext.from_secret_bytes(read_secret(path, "CKKS secret context"), params)
        return cls(base._ctx, params, workers)

    @property
    def workers(self) -> int:
        return self._workers

    def _ranges(self, chunks: int) -> list[tuple[int, int]] | None:
        """Contiguous chunk ranges, one per worker; None to stay in process."""
        w = min(self._workers, chunks // MIN_CHUNKS_PER_WORKER)
        if w < 2:
            return None
        per = -(-chunks // w)
        return [(s, min(s + per, chunks)) for s in range(0, chunks, per)]

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self._workers, mp_context=mp.get_context("spawn"),
                                             initializer=_start_worker,
                                             initargs=(self.serialize_secret(), self.params.name))
        return self._pool

    def encrypt(self, vec: object) -> EncryptedVector:
        x = self._check_input(vec)
        p = self.params
        ranges = self._ranges(p.chunks_for(len(x)))
        if ranges is None:
            return super().encrypt(x)
        n = p.chunk_size
        try:
            parts = list(self._executor().map(_encrypt_range, [x[a * n : b * n] for a, b in ranges]))
        except BrokenProcessPool as exc:
            self._give_up(exc)
            return super().encrypt(x)
        return EncryptedVector(p.name, len(x), b"".join(c0 for c0, _ in parts), b"".join(s for _, s in parts))

    def _decode_checked(self, total: EncryptedSum, summands: int | None) -> np.ndarray:
        if not isinstance(total, EncryptedSum) or total.params_name != self.params.name:
            return super()._decode_checked(total, summands)  # refuses it, with the same message
        p = self.params
        ranges = self._ranges(p.chunks_for(total.length))
        if ranges is None:
            return super()._decode_checked(total, summands)
        per_c0 = len(self.primes) * p.poly_modulus_degree * p.coeff_bytes
        n = p.chunk_size
        jobs = [(total.c0[a * per_c0 : b * per_c0],
                 tuple(s[a * SEED_RECORD_BYTES : b * SEED_RECORD_BYTES] for s in total.seeds),
                 min(b * n, total.length) - a * n, summands if summands is not None else total.summands)
                for a, b in ranges]
        # Each range is checked like the whole (range of every value, the final chunk's padding).
        try:
            return np.concatenate(list(self._executor().map(_decode_range, *zip(*jobs))))
        except BrokenProcessPool as exc:
            self._give_up(exc)
            return super()._decode_checked(total, summands)

    def _give_up(self, exc: Exception) -> None:
        """A worker died (killed, out of memory, or a script that spawns workers without a
        ``__main__`` guard): the work goes on in this process, and stays here."""
        log.warning("CKKS worker processes failed (%s); encrypting and decrypting in this process from now on", exc)
        self.close()
        self._workers = 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass
