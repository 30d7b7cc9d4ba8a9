"""The round state machine of the coordinator. No gRPC here: the servicer calls in, a thread runs it.

One *attempt* runs one protocol session for the next global-adapter version:

    WAIT FOR CLIENTS -> PLAN -> mode stages (secagg: keys, shares, masked inputs, consistency,
    unmasking; ckks: ciphertexts, decryption; plaintext: uploads) -> APPLY -> commit

Each phase has a deadline; a cohort member silent past it is a dropout (a decline is not). When a
mode driver finds too few survivors it raises ``ProtocolAbort``: nothing is released, the attempt is
logged ``aborted`` and the next attempt starts with a fresh session (new plan digest, new round keys).

Crash safety: the new global adapter is written as a checkpoint file first (atomic rename), then one
SQLite transaction marks the attempt ``completed``. On restart the last completed attempt's checkpoint
is the global adapter; a newer checkpoint file (written, not committed) is deleted and its attempt,
left ``running``, becomes ``abandoned``. So an update is applied at most once, whatever instant the
process dies at, and a resumed round never reuses the keys or masks of the abandoned one.
"""

from __future__ import annotations

import abc
import enum
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.errors import ConfigError, InvalidMessage, NotRegistered, ProtocolAbort, SecureFedError
from securefed.faults import fault_point
from securefed.logs import get_logger, log
from securefed.protocol.stages import STAGE_NAMES
from securefed.server.checkpoint import Checkpoint, CheckpointStore
from securefed.server.config import ServerConfig
from securefed.server.roundlog import RoundLog
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.coordinator")

class ServerState(enum.Enum):
    STARTING = "starting"
    WAITING = "waiting_for_clients"
    RUNNING = "running"
    AGGREGATING = "aggregating"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass
class ClientInfo:
    client_id: str
    identity_key: bytes
    last_seen: float
    supported_modes: tuple[int, ...] = ()
    certificate: bytes = b""  # DER, from the TLS handshake


@dataclass
class Phase:
    """One stage of one attempt: what each client is handed, whom we wait for, until when."""

    stage: int  # pb.Stage value
    tasks: dict[str, pb.Task]
    expected: frozenset[str]
    deadline_s: float
    started: float = field(default_factory=time.monotonic)
    responded: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)

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
    attempt: int
    round: int
    config: ServerConfig
    cohort: tuple[str, ...]
    identity_keys: dict[str, bytes]
    global_ckpt: Checkpoint
    payload_length: int
    plan: pb.RoundPlan
    declined: dict[str, str] = field(default_factory=dict)
    dropouts: set[str] = field(default_factory=set)
    certificates: dict[str, bytes] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def global_digest(self) -> bytes:
        return bytes.fromhex(self.global_ckpt.digest)

    def task(self, stage: int, **body: Any) -> pb.Task:
        t = pb.Task(round=self.attempt, stage=stage, **body)
        return t


class RoundDriver(abc.ABC):
    """One aggregation mode. Methods run under the coordinator lock; they must not block."""

    def __init__(self, ctx: AttemptContext) -> None:
        self.ctx = ctx

    # --- plan stage, shared by every mode ----------------------------------------------------------
    def plan_phase(self) -> Phase:
        c = self.ctx
        tasks = {cid: c.task(pb.STAGE_PLAN, plan=c.plan) for cid in c.cohort}
        return Phase(pb.STAGE_PLAN, tasks, frozenset(c.cohort), c.config.deadlines.training_s)

    def on_decision(self, phase: Phase, client: str, req: pb.SubmitResultRequest) -> None:
        import hmac

        if phase.stage != pb.STAGE_PLAN:
            raise InvalidMessage("plan decision outside the plan stage")
        if not hmac.compare_digest(bytes(req.header.session_id), bytes(self.ctx.plan.plan_sha256)):
            raise InvalidMessage("plan decision for another plan (header.session_id must be the plan digest)")
        d = req.plan_decision
        if not d.participate:
            reason = (d.decline_reason or "declined")[:300]
            self.ctx.declined[client] = reason
            phase.responded.add(client)
            log(logger, "client declined the round", attempt=self.ctx.attempt, client=client, reason=reason)

    def accepted(self) -> list[str]:
        return [c for c in self.ctx.cohort if c not in self.ctx.declined]

    def require(self, n: int, what: str) -> None:
        need = self.ctx.config.federation.threshold
        if n < need:
            raise ProtocolAbort(f"only {n} {what}, threshold is {need}: no aggregate is released")

    # --- mode specific ---------------------------------------------------------------------------
    @abc.abstractmethod
    def first_phase(self) -> Phase: ...

    def on_submit(self, phase: Phase, client: str, req: pb.SubmitResultRequest) -> None:
        kind = req.WhichOneof("result")
        if kind == "plan_decision":
            self.on_decision(phase, client, req)
            return
        raise InvalidMessage(f"{kind} is not expected in this aggregation mode")

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        raise InvalidMessage("masked uploads are not expected in this aggregation mode")

    def on_ciphertext_upload(self, phase: Phase, client: str, parts: list[bytes]) -> None:
        raise InvalidMessage("ciphertext uploads are not expected in this aggregation mode")

    @abc.abstractmethod
    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome: ...

    def download(self, client: str) -> tuple[int, list[bytes]] | None:
        """(AggregateKind, parts) this driver serves to ``client`` now, or None (serve the global)."""
        return None


# (global vector, summed payload, context, outcome) -> (new global vector, new server state or None)
ApplyFn = Callable[[np.ndarray, np.ndarray, AttemptContext, RoundOutcome], tuple[np.ndarray, np.ndarray | None]]
# () -> (initial adapter vector, layout JSON, settings JSON, initial server state or None)
InitFn = Callable[[], tuple[np.ndarray, str, str, np.ndarray | None]]
DriverFactory = Callable[[AttemptContext], RoundDriver]


@dataclass
class _Notice:
    attempt: int
    task: pb.Task


class Coordinator:
    """Runs attempts until ``rounds`` rounds completed (or ``attempts_limit`` attempts were made)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        initial_adapter: InitFn,
        settings_json: str,
        payload_length: Callable[[int], int],
        build_plan: Callable[[AttemptContext], pb.RoundPlan],
        driver_factory: DriverFactory,
        apply_update: ApplyFn,
    ) -> None:
        self.config = config
        self.state_dir = config.server.state_dir
        self.roundlog = RoundLog(self.state_dir / "rounds.sqlite")
        self.store = CheckpointStore(config.checkpoint_dir)
        self._initial_adapter = initial_adapter
        self.settings_json = settings_json
        self._payload_length = payload_length
        self._build_plan = build_plan
        self._driver_factory = driver_factory
        self._apply = apply_update
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self.clients: dict[str, ClientInfo] = {}
        self.state = ServerState.STARTING
        self.ctx: AttemptContext | None = None
        self.driver: RoundDriver | None = None
        self.phase: Phase | None = None
        self.global_ckpt: Checkpoint | None = None
        self.failed_attempts = 0
        self._notices: dict[str, _Notice] = {}
        self._sequences: dict[tuple[str, int], int] = {}
        self.detail = ""
        self.error: str | None = None
        self.done_delivered: set[str] = set()
        # Protobuf payload bytes over the whole run (TLS/HTTP2 framing not included).
        self.total_bytes_in = 0
        self.total_bytes_out = 0

    # ---------------------------------------------------------------------------------------------
    # startup and recovery
    def recover(self) -> Checkpoint:
        abandoned = self.roundlog.recover()
        last = self.roundlog.last_completed()
        if last is None:
            removed = self.store.discard_after(0)
            try:
                ckpt = self.store.load(0)
            except SecureFedError:
                vec, layout, settings, state = self._initial_adapter()
                ckpt = self.store.save(0, vec, layout, settings, state)
        else:
            removed = self.store.discard_after(last.round)
            ckpt = self.store.load(last.round, expected_digest=last.result_hash)
        if ckpt.settings_json != self.settings_json:
            raise ConfigError(
                f"{self.state_dir}: the federation was started with other [lora]/[strategy] settings "
                f"({ckpt.settings_json}); restore them, or start a new federation with an empty state_dir"
            )
        if abandoned or removed:
            log(logger, "recovered after a crash", abandoned_attempts=abandoned,
                discarded_checkpoints=[p.name for p in removed], resume_from_round=ckpt.round)
        self.global_ckpt = ckpt
        return ckpt

    def linger(self, max_s: float) -> None:
        """After the last round: keep serving until every connected client has been told ``Done``."""
        end = time.monotonic() + max_s
        with self._cv:
            while time.monotonic() < end and not set(self.connected()) <= self.done_delivered:
                self._cv.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    # ---------------------------------------------------------------------------------------------
    # the main loop
    def run(self) -> bool:
        """Run to completion; True when every round completed."""
        if self.global_ckpt is None:
            self.recover()
        rounds = self.config.federation.rounds
        limit = self.config.attempts_limit
        try:
            while not self._stop.is_set():
                done = self.roundlog.completed_rounds()
                if done >= rounds:
                    break
                if self.roundlog.attempt_count() >= limit:
                    self.error = f"gave up after {limit} attempts ({done}/{rounds} rounds completed)"
                    break
                if not self._wait_for_clients():
                    break
                self._run_attempt()
        finally:
            with self._cv:
                ok = self.roundlog.completed_rounds() >= rounds
                self.state = ServerState.FINISHED if ok else ServerState.FAILED
                self.phase = None
                self.detail = "all rounds completed" if ok else (self.error or "stopped")
                self._cv.notify_all()
            log(logger, "federation finished" if ok else "federation stopped",
                completed_rounds=self.roundlog.completed_rounds(), rounds=rounds,
                global_digest=self.global_ckpt.digest if self.global_ckpt else None, detail=self.detail)
        return ok

    def connected(self) -> list[str]:
        horizon = time.monotonic() - (2 * self.config.deadlines.poll_s + 10.0)
        return sorted(c for c, i in self.clients.items() if i.last_seen >= horizon)

    def _wait_for_clients(self) -> bool:
        need = self.config.federation.min_clients
        deadline = time.monotonic() + self.config.deadlines.join_s
        with self._cv:
            self.state = ServerState.WAITING
            while not self._stop.is_set():
                n = len(self.connected())
                self.detail = f"{n}/{need} clients connected"
                if n >= need:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    self.error = f"only {n} of min_clients={need} clients connected within {self.config.deadlines.join_s:g} s"
                    log(logger, "not enough clients", connected=n, min_clients=need)
                    return False
                self._cv.wait(min(left, 1.0))
        return False

    def _select_cohort(self) -> tuple[str, ...]:
        pool = self.connected()
        k = min(self.config.federation.cohort_size, len(pool))
        # Selection need not be secret, but a CSPRNG costs nothing and resists grinding.
        rng = secrets.SystemRandom()
        return tuple(sorted(rng.sample(pool, k)))

    def _run_attempt(self) -> None:
        assert self.global_ckpt is not None
        round_no = self.global_ckpt.round + 1
        mode = self.config.federation.mode
        attempt = self.roundlog.begin_attempt(round=round_no, mode=mode.value, base_hash=self.global_ckpt.digest, stage="plan")
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        with self._cv:
            cohort = self._select_cohort()
            ctx = AttemptContext(
                attempt=attempt, round=round_no, config=self.config, cohort=cohort,
                identity_keys={c: self.clients[c].identity_key for c in cohort}, global_ckpt=self.global_ckpt,
                payload_length=self._payload_length(self.global_ckpt.vector.size), plan=pb.RoundPlan(),
                certificates={c: self.clients[c].certificate for c in cohort},
            )
        outcome: RoundOutcome | None = None
        try:
            with self._cv:
                ctx.plan = self._build_plan(ctx)
                driver = self._driver_factory(ctx)
                self.ctx, self.driver = ctx, driver
                self.state = ServerState.RUNNING
                phase = driver.first_phase()
                # The round log names a stage before any client can act in it (status and crash forensics
                # never lag behind what clients were told).
                self.roundlog.update_attempt(attempt, cohort=list(cohort), stage=STAGE_NAMES[phase.stage],
                                             session_id=ctx.plan.plan_sha256.hex())
                self.phase = phase
                self._cv.notify_all()
            log(logger, "round started", attempt=attempt, round=round_no, mode=mode.value, cohort=list(cohort),
                global_digest=self.global_ckpt.digest[:16])
            while outcome is None:
                self._wait_phase(phase)
                with self._cv:
                    timings[STAGE_NAMES[phase.stage]] = round(time.monotonic() - phase.started, 4)
                    silent = sorted(phase.expected - phase.responded)
                    if silent:
                        ctx.dropouts.update(silent)
                        log(logger, "stage deadline: dropouts", attempt=attempt, stage=STAGE_NAMES[phase.stage], dropouts=silent)
                    result = driver.finish_phase(phase)
                    if isinstance(result, RoundOutcome):
                        outcome = result
                    else:
                        phase = result
                    self.roundlog.update_attempt(
                        attempt, stage="apply" if outcome else STAGE_NAMES[phase.stage], timings=timings,
                        dropouts=sorted(ctx.dropouts), declined=ctx.declined, bytes_in=ctx.bytes_in,
                        bytes_out=ctx.bytes_out,
                    )
                    if outcome is not None:
                        self.state = ServerState.AGGREGATING
                        self.phase = None
                    else:
                        self.phase = phase
                    self._cv.notify_all()
                if self._stop.is_set():
                    raise ProtocolAbort("server shutting down")
            fault_point("before_apply", attempt)
            t_apply = time.monotonic()
            new_vec, new_state = self._apply(self.global_ckpt.vector, outcome.sums, ctx, outcome)
            ckpt = self.store.save(round_no, new_vec, self.global_ckpt.layout_json, self.settings_json, new_state)
            fault_point("after_checkpoint", attempt)
            timings["apply"] = round(time.monotonic() - t_apply, 4)
            timings["total"] = round(time.monotonic() - t0, 4)
            self.roundlog.update_attempt(attempt, survivors=list(outcome.contributors), timings=timings,
                                         bytes_in=ctx.bytes_in, bytes_out=ctx.bytes_out)
            self.roundlog.complete_attempt(attempt, result_hash=ckpt.digest, checkpoint=str(ckpt.path))
            with self._cv:
                self.global_ckpt = ckpt
                ready = pb.AggregateReady(total_size=ckpt.vector.nbytes, sha256=bytes.fromhex(ckpt.digest))
                for c in ctx.cohort:
                    self._notices[c] = _Notice(attempt, ctx.task(pb.STAGE_AGGREGATE, aggregate_ready=ready))
                self._after_attempt()
            log(logger, "round completed", attempt=attempt, round=round_no, contributors=list(outcome.contributors),
                dropouts=sorted(ctx.dropouts), declined=sorted(ctx.declined), timings=timings,
                bytes_in=ctx.bytes_in, bytes_out=ctx.bytes_out, global_digest=ckpt.digest[:16])
        except SecureFedError as exc:  # ProtocolAbort, a refused message, bad parameters for this cohort
            self.failed_attempts += 1
            timings["total"] = round(time.monotonic() - t0, 4)
            try:
                self.roundlog.update_attempt(attempt, timings=timings, dropouts=sorted(ctx.dropouts), declined=ctx.declined,
                                             bytes_in=ctx.bytes_in, bytes_out=ctx.bytes_out)
            except SecureFedError:
                pass
            self.roundlog.abort_attempt(attempt, reason=str(exc))
            self.store.discard_after(self.global_ckpt.round)
            with self._cv:
                for c in ctx.cohort:
                    self._notices[c] = _Notice(attempt, ctx.task(pb.STAGE_AGGREGATE, aborted=pb.RoundAborted(reason=str(exc))))
                self._after_attempt()
            log(logger, "round aborted", attempt=attempt, round=round_no, reason=str(exc), dropouts=sorted(ctx.dropouts),
                declined=sorted(ctx.declined), timings=timings)

    def _after_attempt(self) -> None:
        self.ctx, self.driver, self.phase = None, None, None
        self.state = ServerState.WAITING
        self._sequences.clear()
        self._cv.notify_all()

    def _wait_phase(self, phase: Phase) -> None:
        with self._cv:
            while not self._stop.is_set() and not phase.complete():
                left = phase.deadline - time.monotonic()
                if left <= 0:
                    return
                self._cv.wait(min(left, 0.5))

    # ---------------------------------------------------------------------------------------------
    # called by the servicer (any thread)
    def register(self, client_id: str, identity_key: bytes, modes: tuple[int, ...] = (), *,
                 certificate: bytes = b"") -> None:
        with self._cv:
            info = self.clients.get(client_id)
            if info is None:
                self.clients[client_id] = ClientInfo(client_id, identity_key, time.monotonic(), modes, certificate)
                log(logger, "client registered", client=client_id)
            else:
                info.identity_key, info.last_seen, info.supported_modes = identity_key, time.monotonic(), modes
                info.certificate = certificate
            self._cv.notify_all()

    def _touch(self, client_id: str) -> None:
        info = self.clients.get(client_id)
        if info is not None:
            info.last_seen = time.monotonic()

    def poll(self, client_id: str, max_wait_s: float) -> pb.Task:
        wait = max(0.0, min(max_wait_s, self.config.deadlines.poll_s))
        end = time.monotonic() + wait
        with self._cv:
            if client_id not in self.clients:
                raise NotRegistered("register before polling")
            while True:
                self._touch(client_id)
                t = self._task_for(client_id)
                if t is not None:
                    return t
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return pb.Task(round=self.ctx.attempt if self.ctx else 0, stage=pb.STAGE_UNSPECIFIED,
                                   wait=pb.Wait(retry_after_ms=200, reason=self.detail or self.state.value))
                self._cv.wait(left)

    def _task_for(self, client_id: str) -> pb.Task | None:
        if self.state in (ServerState.FINISHED, ServerState.FAILED):
            n = self._notices.pop(client_id, None)
            if n is not None:
                return n.task
            self.done_delivered.add(client_id)
            return pb.Task(stage=pb.STAGE_UNSPECIFIED, done=pb.Done(
                final_round=self.global_ckpt.round if self.global_ckpt else 0, reason=self.detail))
        n = self._notices.get(client_id)
        if n is not None and (self.ctx is None or n.attempt != self.ctx.attempt):
            # The outcome of the client's previous attempt comes before anything newer.
            del self._notices[client_id]
            return n.task
        ph = self.phase
        if ph is not None and client_id in ph.tasks and client_id not in ph.touched:
            return ph.tasks[client_id]
        return None

    def check_header(self, client_id: str, header: pb.RequestHeader, *, sequence_required: bool = True) -> AttemptContext:
        """Replay/freshness checks shared by every state-changing request; returns the live attempt."""
        ctx = self.ctx
        if ctx is None or self.phase is None:
            raise InvalidMessage("no round is collecting results now")
        if header.round != ctx.attempt:
            raise InvalidMessage(f"message for round {header.round}, the current round is {ctx.attempt}")
        if client_id not in ctx.cohort:
            raise InvalidMessage("you are not in this round's cohort")
        if sequence_required:
            key = (client_id, ctx.attempt)
            last = self._sequences.get(key, 0)
            if header.sequence <= last:
                raise InvalidMessage(f"sequence {header.sequence} not above {last}: replayed or reordered message")
            self._sequences[key] = header.sequence
        return ctx

    def submit(self, client_id: str, req: pb.SubmitResultRequest, nbytes: int = 0) -> None:
        with self._cv:
            ctx = self.check_header(client_id, req.header)
            phase, driver = self.phase, self.driver
            assert phase is not None and driver is not None
            if client_id in phase.responded and phase.stage != pb.STAGE_PLAN:
                raise InvalidMessage("already answered this stage")
            driver.on_submit(phase, client_id, req)
            phase.touched.add(client_id)
            ctx.bytes_in += nbytes
            self.total_bytes_in += nbytes
            self._touch(client_id)
            self._cv.notify_all()
            if phase.stage == pb.STAGE_UNMASK:
                fault_point("unmask_received", ctx.attempt)  # test hook: die in the middle of unmasking

    def upload_masked(self, client_id: str, header: pb.RequestHeader, ring_bits: int, data: bytes) -> None:
        with self._cv:
            ctx = self.check_header(client_id, header)
            assert self.phase is not None and self.driver is not None
            if client_id in self.phase.responded:
                raise InvalidMessage("already answered this stage")
            self.driver.on_masked_upload(self.phase, client_id, header.stage, ring_bits, data)
            self.phase.touched.add(client_id)
            ctx.bytes_in += len(data)
            self.total_bytes_in += len(data)
            self._touch(client_id)
            self._cv.notify_all()

    def upload_ciphertext(self, client_id: str, header: pb.RequestHeader, parts: list[bytes]) -> None:
        with self._cv:
            ctx = self.check_header(client_id, header)
            assert self.phase is not None and self.driver is not None
            if client_id in self.phase.responded:
                raise InvalidMessage("already answered this stage")
            self.driver.on_ciphertext_upload(self.phase, client_id, parts)
            self.phase.touched.add(client_id)
            ctx.bytes_in += sum(len(p) for p in parts)
            self.total_bytes_in += sum(len(p) for p in parts)
            self._touch(client_id)
            self._cv.notify_all()

    def count_out(self, nbytes: int) -> None:
        with self._cv:
            self.total_bytes_out += nbytes
            if self.ctx is not None:
                self.ctx.bytes_out += nbytes

    def count_in(self, nbytes: int) -> None:
        with self._cv:
            self.total_bytes_in += nbytes

    def download(self, client_id: str, header: pb.RequestHeader) -> tuple[int, int, list[bytes]]:
        """(round, AggregateKind, parts): the driver's aggregate for this client, else the global adapter."""
        with self._cv:
            self._touch(client_id)
            if self.driver is not None and self.ctx is not None and header.round == self.ctx.attempt:
                got = self.driver.download(client_id)
                if got is not None:
                    return self.ctx.attempt, got[0], got[1]
            ckpt = self.global_ckpt
        assert ckpt is not None
        return ckpt.round, pb.AGGREGATE_KIND_GLOBAL_ADAPTER, [ckpt.path.read_bytes()]

    def record_privacy_event(self, client_id: str, attempt: int, event: bytes, signature: bytes, *,
                             sequence: int, entry_hash: str, prev_hash: str | None = None,
                             identity_key: bytes = b"") -> bool:
        from securefed.server.roundlog import RoundLogError

        try:
            return self.roundlog.record_privacy_event(attempt, client_id, event.decode("utf-8"), signature,
                                                      ledger_seq=sequence, entry_hash=entry_hash, prev_hash=prev_hash,
                                                      identity_key=identity_key.hex())
        except RoundLogError as exc:
            raise InvalidMessage(str(exc)) from None

    def expected_payload_bytes(self, ring_bits: int) -> int:
        with self._cv:
            if self.ctx is None:
                raise InvalidMessage("no round is collecting uploads now")
            return self.ctx.payload_length * ring_bits // 8

    def max_ciphertext_bytes(self) -> int:
        from securefed.transport.limits import MAX_PAYLOAD_BYTES

        return MAX_PAYLOAD_BYTES

    def status(self) -> dict[str, Any]:
        with self._cv:
            ctx, ph = self.ctx, self.phase
            return {
                "state": self.state.value,
                "attempt": ctx.attempt if ctx else None,
                "round": ctx.round if ctx else (self.global_ckpt.round if self.global_ckpt else 0),
                "stage": STAGE_NAMES[ph.stage] if ph else None,
                "stage_code": ph.stage if ph else pb.STAGE_UNSPECIFIED,
                "connected": self.connected(),
                "cohort": list(ctx.cohort) if ctx else [],
                "dropouts": sorted(ctx.dropouts) if ctx else [],
                "completed_rounds": self.roundlog.completed_rounds(),
                "global_digest": self.global_ckpt.digest if self.global_ckpt else None,
                "detail": self.detail,
            }
