"""The Ray engine: simulated members on Ray actors, one ``Workspace`` (one base model) per actor.

A local Ray is started with as many CPUs as workers, no dashboard and no usage statistics (set before Ray
loads; the CLI also keeps a Ray it starts on the loopback address), or the engine joins a running Ray
(``ray.init`` done by the caller, as the tests do: then it is left running) or a cluster at ``address``,
which must answer a TCP connection within ``connect_timeout_s`` (else one ``ConfigError`` line).

Tasks are handed to idle actors one at a time, so a slow member never holds up the rest. An actor that
dies (its process killed, out of memory, a node lost) turns the tasks it held into ``lost`` outcomes,
dropouts of that round, and is replaced; the simulation goes on. The round's shared state (global
adapter, server state) is put in the object store once per round, not once per member.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray loads: nothing about this run leaves it

import ray  # noqa: E402
from ray.exceptions import RayActorError  # noqa: E402

from securefed.errors import ConfigError, SimulationError  # noqa: E402
from securefed.simulation.engine import Progress  # noqa: E402
from securefed.simulation.member import MemberOutcome, MemberTask, RoundShared, Workspace, WorkspaceSpec  # noqa: E402

# Each dead actor is replaced; a workspace that cannot even start would otherwise be retried forever.
MAX_REPLACEMENTS_PER_WORKER = 3
OBJECT_STORE_BYTES = 512 * 1024 * 1024


class _Worker:
    """One Ray actor: a workspace (base model, data split, strategy) built once, then members in turn."""

    def __init__(self, spec: WorkspaceSpec) -> None:
        self.ws = Workspace(spec)

    def run(self, shared: RoundShared, task: MemberTask) -> MemberOutcome:
        return self.ws.run(shared, task)

    def info(self) -> tuple[int, int]:
        return os.getpid(), Workspace.models_loaded


def probe_address(address: str, timeout_s: float) -> None:
    """``ConfigError`` unless ``host:port`` (``ray://host:port`` too) accepts a TCP connection in time."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: write host:port or ray://host:port (ray start --head prints it)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (TimeoutError, socket.timeout):
        raise ConfigError(f"Ray at {address} did not answer within {timeout_s:g} s; check the address "
                          "(ray start --head prints it) or raise --connect-timeout") from None
    except OSError as exc:
        raise ConfigError(f"Ray at {address} does not answer ({exc.strerror or exc}); check the address "
                          "(ray start --head prints it), or drop --address to start a local Ray") from None


class RayEngine:
    name = "ray"

    def __init__(self, spec: WorkspaceSpec, *, workers: int = 2, address: str | None = None,
                 connect_timeout_s: float = 10.0, threads: int = 1) -> None:
        self.spec, self.workers, self.threads = spec, workers, threads
        self._started = False
        if not ray.is_initialized():
            if address:
                probe_address(address, connect_timeout_s)
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            else:
                ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, object_store_memory=OBJECT_STORE_BYTES,
                         _node_ip_address="127.0.0.1")
            self._started = True
        self._actor_class = ray.remote(num_cpus=threads, max_restarts=0)(_Worker)
        self._actors = [self._new_actor() for _ in range(workers)]
        self._replacements = 0

    def _new_actor(self):
        return self._actor_class.remote(self.spec)

    def run_round(self, shared: RoundShared, tasks: Sequence[MemberTask], progress: Progress | None = None
                  ) -> list[MemberOutcome]:
        out: list[MemberOutcome | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        idle = deque(range(len(self._actors)))
        inflight: dict = {}  # object ref -> (actor slot, task index)
        shared_ref = ray.put(shared)
        done = 0
        while pending or inflight:
            while idle and pending:
                slot, i = idle.popleft(), pending.popleft()
                inflight[self._actors[slot].run.remote(shared_ref, tasks[i])] = (slot, i)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                slot, i = inflight.pop(ref)
                t0 = time.perf_counter()
                try:
                    out[i] = ray.get(ref)
                except RayActorError as exc:
                    out[i] = MemberOutcome(tasks[i].member, "lost", reason=f"worker died: {type(exc).__name__}",
                                           seconds=time.perf_counter() - t0)
                    self._replace(slot, exc)
                idle.append(slot)
                done += 1
                if progress is not None:
                    progress(done, len(tasks))
        return [o for o in out if o is not None]

    def _replace(self, slot: int, exc: Exception) -> None:
        self._replacements += 1
        if self._replacements > MAX_REPLACEMENTS_PER_WORKER * self.workers:
            raise SimulationError(f"Ray workers keep dying ({self._replacements} replaced; last: {exc}); "
                                  "see the Ray logs under /tmp/ray/session_latest/logs")
        try:
            ray.kill(self._actors[slot])
        except Exception:  # already gone
            pass
        self._actors[slot] = self._new_actor()

    def models_loaded(self) -> int:
        """Base-model copies the live actors hold (each reports its own process's count)."""
        return sum(count for _pid, count in ray.get([a.info.remote() for a in self._actors]))

    def worker_pids(self) -> list[int]:
        return [pid for pid, _count in ray.get([a.info.remote() for a in self._actors])]

    def close(self) -> None:
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self._actors = []
        if self._started:
            ray.shutdown()
