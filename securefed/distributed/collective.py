"""What the ranks of one member exchange over torch.distributed during an attempt, in this order:

1. rank 0 broadcasts every LoRA tensor of its model (the global adapter it loaded, frozen parts too)
   and, under SCAFFOLD, the correction vector;
2. per DP-SGD step, rank 0 draws the Poisson batch (CSPRNG) and sends each rank its contiguous share
   of the rows (:class:`RowSender` / :func:`receive_rows`); every rank clips its rows' per-sample
   gradients, and the clipped sums (plus rank 0's single noise draw) are summed by one all-reduce
   (:class:`RankCollective`, called from ``training.dp``), then the rows' loss sums by another;
3. at the end, every rank's trained adapter digest is gathered: the ranks must hold the same adapter.

Rank 0 alone holds the dataset, the randomness, the ledger and the server connection; a worker sees
only its rows of each batch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.distributed as dist

ROW_KEYS = ("input_ids", "attention_mask", "labels")  # TokenDataset.batch


class RankCollective:
    """``training.dp.Collective`` over the default process group (tensors staged on ``device``: the
    CPU for gloo, the rank's CUDA device for NCCL)."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        t = flat.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(flat.device)


class NoNoise:
    """A worker's ``RandomSource``: its clipped sum goes into the all-reduce without noise (rank 0 adds
    the one draw); it never samples."""

    secure = True  # nothing drawn here: the mechanism's randomness is rank 0's

    def gaussian(self, n: int, std: float) -> np.ndarray:
        return np.zeros(n, dtype=np.float64)

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        raise RuntimeError("a worker rank never samples batches")


class RowSender:
    """Rank 0's ``shard`` for ``train_local``: rank k gets rows [k n / N, (k+1) n / N) of each batch."""

    def __init__(self, world: int, device: str) -> None:
        self.world, self.device = world, torch.device(device)

    def __call__(self, batch: dict | None) -> dict | None:
        n = 0 if batch is None else int(batch["input_ids"].shape[0])
        bounds = [k * n // self.world for k in range(self.world + 1)]
        for k in range(1, self.world):
            rows = bounds[k + 1] - bounds[k]
            dist.send(torch.tensor([rows], dtype=torch.int64, device=self.device), dst=k)
            if rows:
                part = torch.stack([batch[key][bounds[k] : bounds[k + 1]] for key in ROW_KEYS])
                dist.send(part.to(self.device).contiguous(), dst=k)
        if bounds[1] == 0:
            return None
        return {key: batch[key][: bounds[1]] for key in ROW_KEYS}


def receive_rows(seq_len: int, device: str) -> dict | None:
    """A worker's rows of this step's batch (None: it has none this step)."""
    dev = torch.device(device)
    header = torch.zeros(1, dtype=torch.int64, device=dev)
    dist.recv(header, src=0)
    rows = int(header.item())
    if rows == 0:
        return None
    part = torch.empty((len(ROW_KEYS), rows, seq_len), dtype=torch.int64, device=dev)
    dist.recv(part, src=0)
    return {key: part[i].cpu() for i, key in enumerate(ROW_KEYS)}


def _lora_params(model) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def broadcast_adapter(model, device: str) -> None:
    """Rank 0's LoRA tensors (trained and frozen) into every rank's model."""
    params = _lora_params(model)
    flat = torch.cat([p.detach().reshape(-1) for p in params]).to(torch.float32).to(device)
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for p in params:
            k = p.numel()
            p.copy_(flat[offset : offset + k].view_as(p).to(p.device, p.dtype))
            offset += k


def broadcast_vector(vec: np.ndarray | None, size: int, device: str) -> np.ndarray:
    """Rank 0's ``vec`` (float32, length ``size``) on every rank."""
    t = (torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)) if vec is not None
         else torch.empty(size, dtype=torch.float32)).to(device)
    dist.broadcast(t, src=0)
    return t.cpu().numpy()


def adapters_agree(model, device: str, world: int) -> bool:
    """Whether every rank holds the same trained adapter (SHA-256 of its bytes, gathered)."""
    h = hashlib.sha256()
    for p in model.parameters():
        if p.requires_grad:
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    mine = torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).to(device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)
