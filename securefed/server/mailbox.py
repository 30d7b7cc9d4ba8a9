"""The coordinator's request side: who is registered and connected, what each member is handed next,
and which of their messages the live attempt accepts.

The round loop (``coordinator``) posts here: the attempt it opened and its driver, each new phase,
each attempt's outcome (a *notice* per cohort member), the global adapter it published, the end of
the federation. The servicer's threads call the rest: ``register``, the long-poll ``poll``, the
header checks (the live attempt, the cohort, a rising sequence number per member and attempt), and
the submissions and downloads that go through to the driver.

What a member is handed, in order: the outcome of its previous attempt before anything newer; then
its task in the open phase, until it has answered; after the last round, ``Done``.

Every message feeds ``liveness`` (who of the cohort is alive, whom the server refused); heartbeats
record what each member does, for the round loop and ``securefed status``. A member that declined
for its budget is *exhausted* until it registers again (or the mark expires): the round loop leaves
it out of cohorts and ends the federation when no one is left.

Locking: every method takes the coordinator's condition variable (re-entrant, so the round loop can
post while holding it) and notifies it after a change; ``poll`` waits on it. Nothing blocks under it
but that wait: the global adapter file is read after the lock is released.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securefed.errors import (
    CertificateRevoked,
    InvalidMessage,
    NotRegistered,
    ReplayedMessage,
    SecureFedError,
    StaleMessage,
)
from securefed.faults import fault_point
from securefed.logs import get_logger, log
from securefed.server.attempt import AttemptContext, Phase
from securefed.server.checkpoint import Checkpoint
from securefed.server.driver import RoundDriver
from securefed.server.liveness import ClientInfo, Liveness
from securefed.server.uploads import UploadTable
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.coordinator")

WAIT_RETRY_MS = 200


@dataclass(frozen=True)
class _Notice:
    attempt: int
    task: pb.Task


class Mailbox:
    """Registry, task delivery and message intake, under the round loop's condition variable."""

    def __init__(self, cv: threading.Condition, stop: threading.Event, *, poll_s: float,
                 describe: Callable[[], str], silence_s: float = math.inf) -> None:
        self._cv = self.lock = cv
        self._stop = stop
        self._poll_s = poll_s
        self._describe = describe  # the Wait reason: what the coordinator is doing now
        self.clients: dict[str, ClientInfo] = {}
        # Whether a member's DER certificate is on the federation's revocation list (the servicer sets
        # it): a revoked member cannot register, and one revoked since it registered is never drawn.
        self.is_revoked: Callable[[bytes], bool] = lambda certificate: False
        # The live attempt, as the round loop posted it.
        self.ctx: AttemptContext | None = None
        self.driver: RoundDriver | None = None
        self.phase: Phase | None = None
        self.published: Checkpoint | None = None  # the global adapter downloads serve
        self._done: pb.Done | None = None
        self._notices: dict[str, _Notice] = {}
        self._sequences: dict[str, int] = {}  # last sequence per member in the live attempt
        self.done_delivered: set[str] = set()
        self.uploads = UploadTable()  # uploads of the live attempt while they arrive (server.transfers)
        self._adapter: tuple[Checkpoint, bytes] | None = None  # the published bundle's bytes, read once
        self.liveness = Liveness(silence_s)
        # Protobuf payload bytes over the whole run (TLS/HTTP2 framing not included).
        self.total_bytes_in = 0
        self.total_bytes_out = 0

    # --- registry ---------------------------------------------------------------------------------
    def register(self, client_id: str, identity_key: bytes, modes: tuple[int, ...] = (), *,
                 certificate: bytes = b"") -> None:
        if certificate and self.is_revoked(certificate):
            raise CertificateRevoked(f"the certificate of {client_id!r} is revoked by the federation operator")
        with self._cv:
            info = self.clients.get(client_id)
            if info is None:
                info = self.clients[client_id] = ClientInfo(client_id, identity_key, time.monotonic(), modes, certificate)
                log(logger, "client registered", client=client_id)
            else:
                info.identity_key, info.last_seen, info.supported_modes = identity_key, time.monotonic(), modes
                info.certificate = certificate
                info.exhausted = None  # restarted, perhaps with a larger budget: ask it again
                info.unfit, info.lost_in, info.storage_until = None, None, 0.0  # perhaps fixed (server.exclusion)
            info.last_seen_wall = time.time()
            self._cv.notify_all()

    def connected(self) -> list[str]:
        """Registered members heard from within two long-polls (and some slack), none revoked."""
        horizon = time.monotonic() - (2 * self._poll_s + 10.0)
        with self._cv:
            return sorted(c for c, i in self.clients.items()
                          if i.last_seen >= horizon and not (i.certificate and self.is_revoked(i.certificate)))

    def everyone_told_done(self) -> bool:
        with self._cv:
            return set(self.connected()) <= self.done_delivered

    def _touch(self, client_id: str, attempt: int | None = None) -> None:
        info = self.clients.get(client_id)
        if info is not None:
            info.last_seen, info.last_seen_wall = time.monotonic(), time.time()
        self.liveness.seen(client_id, attempt)

    # --- liveness, heartbeats and budgets -------------------------------------------------------------
    def heartbeat(self, client_id: str, hb: pb.MemberHeartbeat) -> None:
        with self._cv:
            info = self.clients.get(client_id)
            if info is None:
                raise NotRegistered("register before sending heartbeats")
            info.heartbeat, info.heartbeat_at = hb, time.monotonic()
            self._touch(client_id, hb.header.round)

    def refuse(self, client_id: str, attempt: int, reason: str) -> None:
        """The server refused a message of ``client_id`` for ``attempt``: its session is over, the round
        loop does not wait for it."""
        with self._cv:
            if self.ctx is not None and attempt == self.ctx.attempt and client_id in self.ctx.cohort:
                self.liveness.refuse(client_id, reason)
                self._cv.notify_all()

    def lost(self, phase: Phase) -> dict[str, str]:
        """Members ``phase`` still waits for that will not answer (dead or refused), with why."""
        with self._cv:
            return self.liveness.lost(phase.expected - phase.responded)

    def mark_exhausted(self, client_id: str, reason: str, until: float) -> None:
        with self._cv:
            info = self.clients.get(client_id)
            if info is not None:
                info.exhausted, info.exhausted_until = reason, until

    def exhausted(self) -> dict[str, str]:
        """Connected members marked as declining for their privacy budget (marks not yet expired)."""
        now = time.monotonic()
        with self._cv:
            return {c: i.exhausted for c in self.connected() if (i := self.clients[c]).exhausted and i.exhausted_until > now}

    # --- posted by the round loop -----------------------------------------------------------------
    def publish(self, ckpt: Checkpoint) -> None:
        with self._cv:
            self.published = ckpt

    def open(self, ctx: AttemptContext, driver: RoundDriver, phase: Phase) -> None:
        """An attempt starts: its driver takes submissions, its first phase is handed out."""
        with self._cv:
            self.ctx, self.driver, self.phase = ctx, driver, phase
            self.liveness.open(ctx.attempt, ctx.cohort)
            self._cv.notify_all()

    def show(self, phase: Phase | None) -> None:
        """The attempt's next phase, or None once it only applies the outcome."""
        with self._cv:
            self.phase = phase
            self._cv.notify_all()

    def close(self, ctx: AttemptContext, **outcome: Any) -> None:
        """The attempt is over (opened here or not): each cohort member's notice is its outcome (a
        ``Task`` body), and nothing more of it is taken."""
        with self._cv:
            for c in ctx.cohort:
                self._notices[c] = _Notice(ctx.attempt, ctx.task(pb.STAGE_AGGREGATE, **outcome))
            self.ctx, self.driver, self.phase = None, None, None
            self._sequences.clear()
            self.uploads.clear()
            self.liveness.close()
            self._cv.notify_all()

    def finish(self, done: pb.Done) -> None:
        """The federation is over: notices still pending go out first, then ``Done`` to everyone."""
        with self._cv:
            self._done = done
            self.phase = None
            self._cv.notify_all()

    # --- what a member is handed next -------------------------------------------------------------
    def poll(self, client_id: str, max_wait_s: float, attempt: int | None = None) -> pb.Task:
        """Long-poll: the member's next task, or ``Wait`` after at most ``poll_s`` seconds.
        ``attempt``: the one the member works on (0: none), a sign of life for it."""
        end = time.monotonic() + max(0.0, min(max_wait_s, self._poll_s))
        with self._cv:
            if client_id not in self.clients:
                raise NotRegistered("register before polling")
            counted = self.liveness.poll_started(client_id, attempt)
            self.clients[client_id].polled_at = time.monotonic()
            if self.clients[client_id].lost_in not in (None, attempt):
                self.clients[client_id].lost_in = None  # it left the attempt it was lost in: alive and free
            try:
                while True:
                    self._touch(client_id, attempt)
                    t = self._next_task(client_id)
                    if t is not None:
                        if self.ctx is not None and t.round == self.ctx.attempt:
                            self.liveness.hand(client_id)
                        return t
                    left = end - time.monotonic()
                    if left <= 0 or self._stop.is_set():
                        return pb.Task(round=self.ctx.attempt if self.ctx else 0, stage=pb.STAGE_UNSPECIFIED,
                                       wait=pb.Wait(retry_after_ms=WAIT_RETRY_MS, reason=self._describe()))
                    self._cv.wait(left)
            finally:
                self.liveness.poll_ended(client_id, counted)

    def _next_task(self, client_id: str) -> pb.Task | None:
        if self._done is not None:
            n = self._notices.pop(client_id, None)
            if n is not None:
                return n.task
            self.done_delivered.add(client_id)
            return pb.Task(stage=pb.STAGE_UNSPECIFIED, done=self._done)
        n = self._notices.get(client_id)
        if n is not None and (self.ctx is None or n.attempt != self.ctx.attempt):
            # The outcome of the client's previous attempt comes before anything newer.
            del self._notices[client_id]
            return n.task
        ph = self.phase
        if ph is not None and client_id in ph.tasks and client_id not in ph.touched:
            return ph.tasks[client_id]
        return None

    # --- what a member hands in -------------------------------------------------------------------
    def check_header(self, client_id: str, header: pb.RequestHeader, *, sequence_required: bool = True) -> AttemptContext:
        """Replay/freshness checks shared by every state-changing request; returns the live attempt."""
        with self._cv:
            ctx = self.ctx
            if ctx is None or self.phase is None:
                raise StaleMessage("no round is collecting results now")
            if header.round != ctx.attempt:
                raise StaleMessage(f"message for attempt {header.round}, the current attempt is {ctx.attempt} "
                                   f"(round {ctx.round})")
            if client_id not in ctx.cohort:
                raise InvalidMessage("you are not in this round's cohort")
            if sequence_required:
                last = self._sequences.get(client_id, 0)
                if header.sequence <= last:
                    raise ReplayedMessage(f"sequence {header.sequence} not above {last}: replayed or reordered message")
                self._sequences[client_id] = header.sequence
            return ctx

    def submit(self, client_id: str, req: pb.SubmitResultRequest, nbytes: int = 0) -> None:
        # The plan stage takes a member's decision and then its keys; the driver refuses what does not fit.
        self._take(client_id, req.header, nbytes, lambda d, ph: d.on_submit(ph, client_id, req), again_in_plan=True)

    def upload_masked(self, client_id: str, header: pb.RequestHeader, ring_bits: int, data: bytes) -> None:
        self._take(client_id, header, len(data),
                   lambda d, ph: d.on_masked_upload(ph, client_id, header.stage, ring_bits, data))

    def admit_upload(self, client_id: str, header: pb.RequestHeader, kind: int, ring_bits: int,
                     part_sizes: tuple[int, ...], *, then: Callable[[], Any]) -> Any:
        """Before a byte of an upload is buffered: the checks its delivery will face, then ``then()``
        (which records the upload) under the same lock, so it cannot outlive an attempt that just ended."""
        with self._cv:
            self.check_header(client_id, header)
            phase, driver = self.phase, self.driver
            assert phase is not None and driver is not None
            if client_id in phase.responded:
                raise ReplayedMessage("already answered this stage")
            driver.check_upload(phase, client_id, kind, int(header.stage), ring_bits, part_sizes)
            return then()

    def take_upload(self, client_id: str, header: pb.RequestHeader, kind: int, ring_bits: int,
                    parts: list[bytearray | memoryview]) -> None:
        """A whole upload, admitted by ``admit_upload`` (whose header carried the sequence number); its
        bytes were counted as they arrived (``count_upload``)."""
        if kind == pb.TRANSFER_KIND_RING_VECTOR:
            self._take(client_id, header, 0, lambda d, ph: d.on_masked_upload(ph, client_id, header.stage, ring_bits,
                                                                              parts[0]), sequenced=False)
        else:
            self._take(client_id, header, 0, lambda d, ph: d.on_ciphertext_upload(ph, client_id, parts), sequenced=False)

    def _take(self, client_id: str, header: pb.RequestHeader, nbytes: int,
              hand: Callable[[RoundDriver, Phase], None], *, again_in_plan: bool = False,
              sequenced: bool = True) -> None:
        """Header checks, then the driver; the member is not handed this stage's task again."""
        with self._cv:
            try:
                ctx = self.check_header(client_id, header, sequence_required=sequenced)
                phase, driver = self.phase, self.driver
                assert phase is not None and driver is not None
                if client_id in phase.responded and not (again_in_plan and phase.stage == pb.STAGE_PLAN):
                    raise ReplayedMessage("already answered this stage")
                hand(driver, phase)
            except SecureFedError as exc:  # the member leaves the session on any refusal: do not wait for it
                self.refuse(client_id, header.round, str(exc))
                raise
            phase.touched.add(client_id)
            ctx.bytes_in += nbytes
            self.total_bytes_in += nbytes
            self._touch(client_id, ctx.attempt)
            self._cv.notify_all()
            if phase.stage == pb.STAGE_UNMASK:
                fault_point("unmask_received", ctx.attempt)  # test hook: die in the middle of unmasking

    def download(self, client_id: str, header: pb.RequestHeader) -> tuple[int, int, list[bytes]]:
        """(round, AggregateKind, parts): the driver's aggregate for this client, else the global adapter."""
        with self._cv:
            self._touch(client_id, header.round)
            if self.ctx is not None and self.driver is not None and header.round == self.ctx.attempt:
                got = self.driver.download(client_id)
                if got is not None:
                    return self.ctx.attempt, got[0], got[1]
            ckpt = self.published
        assert ckpt is not None
        cached = self._adapter
        if cached is None or cached[0] is not ckpt:
            cached = self._adapter = (ckpt, ckpt.path.read_bytes())  # outside the lock
        return ckpt.round, pb.AGGREGATE_KIND_GLOBAL_ADAPTER, [cached[1]]

    # --- byte counts --------------------------------------------------------------------------------
    def count_out(self, nbytes: int) -> None:
        with self._cv:
            self.total_bytes_out += nbytes
            if self.ctx is not None:
                self.ctx.bytes_out += nbytes

    def count_in(self, nbytes: int) -> None:
        with self._cv:
            self.total_bytes_in += nbytes

    def count_upload(self, client_id: str, nbytes: int) -> None:
        """Upload bytes as they arrive: the attempt's and the run's counts, and a sign of life."""
        with self._cv:
            self.total_bytes_in += nbytes
            if self.ctx is not None:
                self.ctx.bytes_in += nbytes
            self._touch(client_id)
