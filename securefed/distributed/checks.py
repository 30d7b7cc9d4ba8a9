"""Whether this machine can run ``[model] processes = N`` ranks: refused in one line at ``--check``
and at start-up when it cannot.

Refused: more ranks than devices (CUDA devices on a GPU member, CPU cores on a CPU one: a rank per
core, each with its share of the threads), a backend this torch build or machine lacks (NCCL needs
CUDA; MPS has no torch.distributed backend), and a logical batch smaller than the number of ranks
(some rank would never see a row: it would only slow the others down).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from securefed.errors import ConfigError
from securefed.training.config import ModelSettings
from securefed.training.model import resolve_device


@dataclass(frozen=True)
class RankLayout:
    """Where the ranks of one member run."""

    processes: int
    backend: str  # gloo | nccl
    devices: tuple[str, ...]  # one per rank: "cpu" or "cuda:k"
    threads: int  # torch threads per rank (CPU ranks)

    def describe(self) -> str:
        where = "CPU" if self.devices[0] == "cpu" else ", ".join(self.devices)
        return f"{self.processes} ranks over {self.backend} on {where}" + (
            f", {self.threads} thread(s) each" if self.devices[0] == "cpu" else "")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rank_layout(settings: ModelSettings, logical_batch: int, *, cores: int | None = None,
                cuda_devices: int | None = None, gloo: bool | None = None, nccl: bool | None = None,
                threads: int | None = None) -> RankLayout:
    """The ranks ``settings`` asks for on this machine, or ``ConfigError`` naming what to change.
    The keyword arguments replace what is probed (tests)."""
    n = settings.processes
    device = resolve_device(settings.device)
    if device.type == "cuda" and settings.device in ("auto", "cuda"):
        device = torch.device("cuda")  # ranks take cuda:0..N-1; an explicit cuda:K pins one device
    gloo = dist.is_available() and dist.is_gloo_available() if gloo is None else gloo
    nccl = dist.is_available() and dist.is_nccl_available() if nccl is None else nccl
    if n == 1:
        return RankLayout(1, "none", (str(device),), threads or torch.get_num_threads())
    if device.type == "mps":
        raise ConfigError(f"[model] processes = {n}: torch.distributed has no backend for MPS; use processes = 1")
    backend = settings.backend if settings.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and (device.type != "cuda" or not nccl):
        why = "this torch build has no NCCL" if device.type == "cuda" else "NCCL needs CUDA devices"
        raise ConfigError(f"[model] backend = 'nccl': {why}; use backend = 'gloo' (or 'auto')")
    if backend == "gloo" and not gloo:
        raise ConfigError("[model] backend = 'gloo': this torch build has no gloo backend; use processes = 1")
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"[model] processes = {n} with device = {settings.device!r}: one device cannot hold "
                              f"{n} ranks; use device = 'cuda' (ranks on cuda:0..{n - 1}) or processes = 1")
        have = torch.cuda.device_count() if cuda_devices is None else cuda_devices
        if n > have:
            raise ConfigError(f"[model] processes = {n}: only {have} CUDA device(s) visible; lower processes to {have}")
        layout = RankLayout(n, backend, tuple(f"cuda:{k}" for k in range(n)), 1)
    else:
        have = cpu_cores() if cores is None else cores
        if n > have:
            raise ConfigError(f"[model] processes = {n}: this machine has {have} CPU core(s) for its ranks; lower "
                              f"processes to {have} or fewer")
        layout = RankLayout(n, backend, ("cpu",) * n, max(1, (threads or torch.get_num_threads()) // n))
    if logical_batch < n:
        raise ConfigError(f"[model] processes = {n}: the logical batch (training.batch_size = {logical_batch}) is "
                          f"smaller than the number of ranks; lower processes or raise batch_size to at least {n}")
    return layout
