"""What one attempt is made of: its context, its phases, and the outcome its driver hands back.

An *attempt* is one protocol session for the next global-adapter version (``round``); its id
(``attempt``, the ``round`` of every wire message) is never reused, so a re-run after an abort or a
crash gets a fresh session. These are plain data shared by the round loop, the mailbox and the mode
drivers; they hold no lock and do no I/O (whoever changes them holds the coordinator's lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.server.checkpoint import Checkpoint
from securefed.server.config import ServerConfig
from securefed.transport._generated import federation_pb2 as pb


@dataclass
class Phase:
    """One stage of one attempt: what each client is handed, whom we wait for, until when."""

    stage: int  # pb.Stage value
    tasks: dict[str, pb.Task]
    expected: frozenset[str]
    deadline_s: float
    started: float = field(default_factory=time.monotonic)
    responded: set[str] = field(default_factory=set)  # answered this stage (a driver adds them)
    touched: set[str] = field(default_factory=set)  # sent anything in this stage: stop handing them the task
    deadline_key: str = ""  # the [deadlines] setting that gave deadline_s (named when it fires)

    @property
    def deadline(self) -> float:
        return self.started + self.deadline_s

    def complete(self) -> bool:
        return self.expected <= self.responded


@dataclass(frozen=True)
class RoundOutcome:
    """What a driver hands back: the decoded SUM of the payload vectors, and who is in it."""

    sums: np.ndarray  # float64, the sum over contributors of their payload vectors
    contributors: tuple[str, ...]
    dropouts: tuple[str, ...]


@dataclass
class AttemptContext:
    """Everything one attempt knows: its ids, cohort, plan, the global adapter it starts from, and
    what happened so far (declines, dropouts, bytes)."""

    attempt: int
    round: int
    config: ServerConfig
    cohort: tuple[str, ...]
    identity_keys: dict[str, bytes]
    global_ckpt: Checkpoint
    payload_length: int
    plan: pb.RoundPlan
    declined: dict[str, str] = field(default_factory=dict)
    decline_kinds: dict[str, int] = field(default_factory=dict)  # pb.PlanDeclineKind per declined member
    dropouts: set[str] = field(default_factory=set)
    certificates: dict[str, bytes] = field(default_factory=dict)
    # member -> {"reason", "evidence"}: proven to have broken the protocol in this attempt (server.culprits)
    culprits: dict[str, dict[str, Any]] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def global_digest(self) -> bytes:
        return bytes.fromhex(self.global_ckpt.digest)

    def task(self, stage: int, **body: Any) -> pb.Task:
        return pb.Task(round=self.attempt, stage=stage, **body)
