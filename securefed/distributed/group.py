"""Rank 0's side of one member on several processes: start the worker ranks, train an attempt over all
of them, stop them.

The member's daemon is rank 0: it keeps the dataset, the Poisson sampling and the noise (CSPRNG), the
ledger and the server connection, and runs the ordinary ``train_local`` with two additions: ``shard``
hands each worker its rows of every sampled batch and ``collective`` sums the ranks' clipped gradient
sums (with rank 0's single noise draw) before the update. The mechanism is therefore the
single-process one - the same Poisson batch, the same clipping of every row, one Gaussian draw - and
so is the DP event the ledger records.

Workers are this machine's processes (``python -m securefed.distributed.worker``), started when the
member loads its model and kept between attempts. The rendezvous is a ``FileStore`` in a private
(0700) directory and gloo listens on 127.0.0.1 only: no port is opened to the network (NCCL uses its
own transport between this machine's GPUs). Any failure during an attempt - a rank that exits, a
collective that fails or times out, ranks whose adapters differ at the end - stops every rank and
raises before anything is released; the next plan starts the ranks again.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from securefed.distributed.checks import RankLayout
from securefed.distributed.collective import RankCollective, RowSender, adapters_agree, broadcast_adapter
from securefed.distributed.collective import broadcast_vector
from securefed.distributed.wire import PlanChoice, Stop, TrainCommand, WorkerSetup, describe_correction, encode
from securefed.distributed.worker import comm_device, init_group
from securefed.errors import RankFailed, SecureFedError
from securefed.heterogeneous.config import CapacitySettings
from securefed.logs import get_logger, log
from securefed.training.config import LocalTrainingSettings, LoraSettings, ModelSettings
from securefed.training.data import TokenDataset
from securefed.training.dp import LocalTrainResult, choose_clipping, plan_steps, train_local

logger = get_logger("distributed")

RANK_TIMEOUT_S = 600.0  # a collective waits this long for a rank that hangs (a dead one fails at once)
START_TIMEOUT_S = 1800.0  # a worker imports torch and loads the base model within this


class RankGroup:
    def __init__(self, ranks: RankLayout, *, model_dir, model: ModelSettings, lora: LoraSettings, plan,
                 capacity: CapacitySettings, layout_json: str) -> None:
        self.ranks = ranks
        self.world = ranks.processes
        self.comm = comm_device(ranks.backend, ranks.devices[0])
        self._common = dict(world=self.world, backend=ranks.backend, threads=ranks.threads, timeout_s=RANK_TIMEOUT_S,
                            model_dir=str(model_dir), model=model, lora=lora, capacity=capacity,
                            layout_json=layout_json,
                            plan=PlanChoice(physical_batch_size=plan.physical_batch_size,
                                            gradient_checkpointing=plan.gradient_checkpointing,
                                            quantization=plan.quantization, trained_layers=plan.trained_layers))
        self.procs: list[subprocess.Popen] = []
        self._dir: str | None = None
        self._grouped = False
        atexit.register(self.close)

    @property
    def up(self) -> bool:
        return self._grouped and all(p.poll() is None for p in self.procs)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and join them; ``RankFailed`` if one does not come up."""
        self.close()
        if dist.is_initialized():
            raise RankFailed("this process already belongs to another torch.distributed group; one member's ranks "
                             "per process")
        self._dir = tempfile.mkdtemp(prefix="securefed-ranks-")  # 0700: the rendezvous is this user's
        store = os.path.join(self._dir, "store")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.ranks.threads))
        t0 = time.monotonic()
        try:
            for k in range(1, self.world):
                proc = subprocess.Popen([sys.executable, "-m", "securefed.distributed.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, bufsize=0)
                self.procs.append(proc)
                proc.stdin.write(encode(WorkerSetup(rank=k, store_path=store, device=self.ranks.devices[k],
                                                    **self._common)))
            self._expect("joining", START_TIMEOUT_S, "starting")
            init_group(rank=0, world=self.world, backend=self.ranks.backend, store_path=store,
                       timeout_s=RANK_TIMEOUT_S, device=self.ranks.devices[0])
            self._grouped = True
            self._expect("ready", START_TIMEOUT_S, "loading the base model")
        except (OSError, RuntimeError, SecureFedError) as exc:
            self._fail(exc, "starting")
        log(logger, "ranks started", ranks=self.ranks.describe(), seconds=round(time.monotonic() - t0, 1))

    def close(self) -> None:
        """Stop every worker (asked first, then killed) and leave the process group; idempotent."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write(encode(Stop()))
                    p.stdin.close()
                except OSError:
                    pass
        if self._grouped:  # first: a worker blocked in a collective then fails at once instead of waiting
            self._grouped = False
            dist.destroy_process_group()
        deadline = time.monotonic() + 5.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self.procs = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # --- one attempt -----------------------------------------------------------------------------
    def train(self, model, data: TokenDataset, settings: LocalTrainingSettings, sigma: float, *, attempt: int,
              correction=None, **train_kw) -> LocalTrainResult:
        """``train_local`` over every rank; ``correction``: the strategy's own (whole-layout) correction,
        rebuilt on each worker. ``RankFailed`` (nothing trained counts: nothing was released) if a rank
        fails; the ranks are then stopped and start again on the next call."""
        if not self.up:
            self.start()
        physical = train_kw.get("physical_batch_size")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        mode = choose_clipping(settings.clipping, physical or settings.batch_size, trainable)[0]
        settings = settings.model_copy(update={"clipping": mode})  # every rank runs the same mode
        _, steps = plan_steps(settings, len(data))
        spec, vector = describe_correction(correction)
        cmd = TrainCommand(attempt=attempt, training=settings, sigma=sigma, steps=steps, seq_len=data.seq_len,
                           correction=spec)
        threads = torch.get_num_threads()
        try:
            for p in self.procs:
                p.stdin.write(encode(cmd))
            broadcast_adapter(model, self.comm)
            if vector is not None:
                broadcast_vector(vector, vector.size, self.comm)
            if self.ranks.devices[0] == "cpu":
                torch.set_num_threads(self.ranks.threads)
            result = train_local(model, data, settings, sigma, collective=RankCollective(self.comm),
                                 shard=RowSender(self.world, self.comm), **train_kw)
            agree = adapters_agree(model, self.comm, self.world)
            self._expect("done", RANK_TIMEOUT_S, "finishing the attempt")
        except (OSError, RuntimeError, SecureFedError) as exc:
            self._fail(exc, f"training attempt {attempt}")
        finally:
            torch.set_num_threads(threads)
        if not agree:
            self._fail(RuntimeError("the ranks' adapters differ after training"), f"training attempt {attempt}")
        return result

    # --- helpers ---------------------------------------------------------------------------------
    def _fail(self, exc: BaseException, doing: str):
        time.sleep(0.2)  # a rank that crashed takes a moment to be reaped
        dead = [(k + 1, p.returncode) for k, p in enumerate(self.procs) if p.poll() is not None]
        self.close()
        if dead:
            k, code = dead[0]
            raise RankFailed(f"rank {k} of {self.world} ended (exit code {code}) while {doing}; nothing from this "
                             "attempt was released, and the ranks restart at the next attempt") from None
        if isinstance(exc, SecureFedError) and not isinstance(exc.__cause__, RuntimeError):
            raise exc
        raise RankFailed(f"{doing} over {self.world} ranks failed ({str(exc).splitlines()[0][:200] if str(exc) else exc!r}); "
                         "the ranks restart at the next attempt") from None

    def _expect(self, key: str, timeout_s: float, doing: str) -> None:
        """One protocol line ``{key: ...}`` from every worker, or ``RankFailed``."""
        deadline = time.monotonic() + timeout_s
        for k, p in enumerate(self.procs, start=1):
            line = b""
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RankFailed(f"rank {k} of {self.world} did not answer within {timeout_s:g} s while {doing}")
                ready, _, _ = select.select([p.stdout], [], [], min(left, 1.0))
                if ready:
                    chunk = p.stdout.read(1)
                    if not chunk:
                        p.wait()
                        raise RankFailed(f"rank {k} of {self.world} ended (exit code {p.returncode}) while {doing}")
                    line += chunk
            try:
                ok = key in json.loads(line)
            except ValueError:
                ok = False
            if not ok:
                raise RankFailed(f"rank {k} of {self.world} sent {line[:80]!r} while {doing}")
