"""A worker rank of one member: ``python -m securefed.distributed.worker``, started by rank 0
(:class:`securefed.distributed.group.RankGroup`), never by hand.

It reads its ``WorkerSetup`` from stdin, joins the process group, loads the base model exactly as rank
0 did (same LoRA, memory plan and capacity), then runs each ``TrainCommand``: it takes rank 0's
adapter, and for every step clips the per-sample gradients of the rows rank 0 sends it and adds its
clipped sum into the all-reduce, with no noise of its own. It holds no credentials, no dataset, no
ledger and no connection to the server; stdout carries only its protocol lines (anything a library
prints goes to stderr). It exits on ``Stop``, on end of input (rank 0 gone), or on any failure, which
rank 0 sees as a failed collective.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import TextIO

import torch
import torch.distributed as dist

from securefed.distributed.collective import NoNoise, RankCollective, adapters_agree, broadcast_adapter
from securefed.distributed.collective import broadcast_vector, receive_rows
from securefed.distributed.wire import Stop, TrainCommand, WorkerSetup, build_correction, decode_command
from securefed.errors import SecureFedError
from securefed.faults import fault_point
from securefed.heterogeneous.partial import PartialAdapter, load_for_training
from securefed.logs import get_logger, log, setup_logging
from securefed.training.adapter import AdapterLayout
from securefed.training.config import ClippingMode
from securefed.training.dp import DPTrainer
from securefed.training.loss import SequenceLoss

logger = get_logger("distributed")


def comm_device(backend: str, device: str) -> str:
    """Where a rank stages tensors it sends: NCCL moves CUDA tensors, gloo host memory."""
    return device if backend == "nccl" else "cpu"


def init_group(*, rank: int, world: int, backend: str, store_path: str, timeout_s: float, device: str) -> None:
    """Join the member's process group (the rendezvous is a FileStore; gloo listens on loopback only)."""
    store = dist.FileStore(store_path, world)
    kwargs = {}
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
        kwargs["pg_options"] = opts
    elif device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


class Worker:
    def __init__(self, setup: WorkerSetup, say) -> None:
        self.setup, self.say = setup, say
        self.comm = comm_device(setup.backend, setup.device)
        model_settings = setup.model.model_copy(update={"device": setup.device, "processes": 1})
        loaded, self.partial = load_for_training(setup.model_dir, model_settings, setup.lora, setup.plan,
                                                 setup.capacity, setup.layout_json)
        self.model, self.loss = loaded.model, SequenceLoss(loaded.model, loaded.kind)
        self.dim = AdapterLayout.from_json(setup.layout_json).total_size  # a SCAFFOLD correction's length

    def train(self, cmd: TrainCommand) -> None:
        broadcast_adapter(self.model, self.comm)
        vector = None
        if cmd.correction.kind == "control":
            vector = torch.from_numpy(broadcast_vector(None, self.dim, self.comm))
        correction = build_correction(cmd.correction, vector)
        part: PartialAdapter | None = self.partial
        hooks = part.correction(correction) if part is not None else correction
        trainer = DPTrainer(self.model, cmd.training, cmd.sigma, cmd.training.batch_size,
                            ClippingMode(cmd.training.clipping), NoNoise(), hooks, loss=self.loss,
                            physical_batch_size=self.setup.plan.physical_batch_size,
                            grad_mask=part.grad_masks() if part is not None else None,
                            collective=RankCollective(self.comm))
        try:
            for step in range(1, cmd.steps + 1):
                rows = receive_rows(cmd.seq_len, self.comm)
                fault_point(f"rank:step{step}", cmd.attempt)  # crash tests: a rank dies mid-step
                trainer.step(rows)
        finally:
            trainer.close()
        adapters_agree(self.model, self.comm, self.setup.world)
        self.say({"done": cmd.attempt})



def main(stdin: TextIO = sys.stdin) -> int:
    # stdout is the protocol channel: keep it, and send whatever else writes to fd 1 to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def say(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    setup_logging(json_lines=False, level="warning")
    setup = decode_command(stdin.readline())
    if not isinstance(setup, WorkerSetup):
        log(logger, "worker: the first message was not a setup", level=logging.ERROR)
        return 2
    torch.set_num_threads(setup.threads)
    say({"joining": setup.rank})
    init_group(rank=setup.rank, world=setup.world, backend=setup.backend, store_path=setup.store_path,
               timeout_s=setup.timeout_s, device=setup.device)
    try:
        worker = Worker(setup, say)
        say({"ready": setup.rank})
        for line in stdin:
            cmd = decode_command(line)
            if isinstance(cmd, Stop):
                break
            if isinstance(cmd, TrainCommand):
                worker.train(cmd)
    except (RuntimeError, SecureFedError) as exc:  # rank 0 ended the group, or this rank failed: rank 0 says why
        log(logger, "worker rank ended", level=logging.WARNING, rank=setup.rank,
            error=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
