"""Where simulated members run: one small engine interface, a local implementation and a Ray one.

An engine only decides *where* ``Workspace.run`` executes (the member's real path; see ``member``); it
never changes what a member computes, so two engines give the same outcomes for the same tasks. The
local engine runs every member in this process on the driver's own workspace (one base model in all);
``ray_engine.RayEngine`` runs them on Ray actors, one workspace (one base model) per actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from securefed.simulation.member import MemberOutcome, MemberTask, RoundShared, Workspace

Progress = Callable[[int, int], None]  # (members done, members in the round)


class Engine(Protocol):
    name: str
    workers: int

    def run_round(self, shared: RoundShared, tasks: Sequence[MemberTask], progress: Progress | None = None
                  ) -> list[MemberOutcome]:
        """Every task's outcome, in task order. A member whose worker died is ``status == "lost"``."""

    def models_loaded(self) -> int:
        """Base-model copies the engine's workers hold (one per worker process)."""

    def close(self) -> None: ...


class LocalEngine:
    """Members one after another in this process, on one workspace."""

    name = "local"
    workers = 1

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def run_round(self, shared: RoundShared, tasks: Sequence[MemberTask], progress: Progress | None = None
                  ) -> list[MemberOutcome]:
        out = []
        for task in tasks:
            out.append(self.workspace.run(shared, task))
            if progress is not None:
                progress(len(out), len(tasks))
        return out

    def models_loaded(self) -> int:
        return Workspace.models_loaded

    def close(self) -> None:
        pass


class ProgressLine:
    """A progress callback that prints at most one line every ``every_s`` seconds (and the last one)."""

    def __init__(self, write: Callable[[str], None], label: str, every_s: float = 5.0) -> None:
        self.write, self.label, self.every_s = write, label, every_s
        self._last = time.monotonic()
        self._printed = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if (done == total and self._printed) or now - self._last >= self.every_s:
            self._last, self._printed = now, True
            self.write(f"{self.label}: {done}/{total} members done")
