"""The coordinator's round loop: recover, wait for clients, run an attempt, commit or abort it.

No gRPC here, and no request handling: the servicer's threads go through the ``mailbox``, this loop
runs in its own thread and posts to it. One *attempt* runs one protocol session for the next
global-adapter version:

    WAIT FOR CLIENTS -> PLAN -> mode stages (secagg: keys, shares, masked inputs, consistency,
    unmasking; ckks: ciphertexts, decryption; plaintext: uploads) -> APPLY -> commit

Each phase has a deadline (extended for members reporting training progress: ``stage_clock``); a
cohort member silent past it is a dropout (a decline is not), and so is at once one silent for a few
heartbeats or refused by the server. Too few survivors: ``ProtocolAbort``, nothing is released, and
the next attempt is a fresh session. Who is left out of cohorts: ``exclusion``, ``budget_watch``.

Crash safety: the new global adapter is written as a checkpoint file first (atomic rename), then one
SQLite transaction marks the attempt ``completed``. On restart the last completed attempt's checkpoint
is the global adapter; a newer checkpoint file (written, not committed) is deleted and its attempt,
left ``running``, becomes ``abandoned``. So an update is applied at most once, whatever instant the
process dies at, and a resumed round never reuses the keys or masks of the abandoned one.

Locking: one condition variable, shared with the mailbox, guards the live attempt (drivers run under it).
"""

from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from securefed.errors import CheckpointError, ConfigError, DiskWriteError, ProtocolAbort, RoundLogError, SecureFedError
from securefed.faults import fault_point
from securefed.logs import get_logger, log
from securefed.protocol.stages import STAGE_NAMES
from securefed.server.attempt import AttemptContext, Phase, RoundOutcome
from securefed.server.budget_watch import BudgetWatch
from securefed.server.checkpoint import Checkpoint, CheckpointStore
from securefed.server.config import ServerConfig
from securefed.server.culprits import Culprits
from securefed.server.driver import DriverFactory
from securefed.server.ending import FINAL_ENDINGS, conclude
from securefed.server.exclusion import can_take_part, give_up_cause, left_out, note_attempt
from securefed.server.livestatus import status_of
from securefed.server.mailbox import Mailbox
from securefed.server.roundlog import RoundLog
from securefed.server.stage_clock import close_phase, extend_for_work, wait_until_idle
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.coordinator")


class ServerState(enum.Enum):
    STARTING = "starting"
    WAITING = "waiting_for_clients"
    RUNNING = "running"
    AGGREGATING = "aggregating"
    FINISHED = "finished"
    FAILED = "failed"


# (global vector, summed payload, context, outcome) -> (new global vector, new server state or None)
ApplyFn = Callable[[np.ndarray, np.ndarray, AttemptContext, RoundOutcome], tuple[np.ndarray, np.ndarray | None]]
# () -> (initial adapter vector, layout JSON, settings JSON, initial server state or None)
InitFn = Callable[[], tuple[np.ndarray, str, str, np.ndarray | None]]


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
        seal_end: Callable[[pb.Done], pb.Done],
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
        self._seal_end = seal_end  # signs the end of the federation (securefed.protocol.ending)
        self._cv = self.lock = threading.Condition()  # ``lock``: for readers of the live state (livestatus)
        self._stop = threading.Event()
        self.mailbox = Mailbox(self._cv, self._stop, poll_s=config.deadlines.poll_s,
                               describe=lambda: self.detail or self.state.value, silence_s=config.deadlines.silence_s)
        self.state = ServerState.STARTING
        self.global_ckpt: Checkpoint | None = None
        self.failed_attempts, self.detail = 0, ""
        self.error: str | None = None
        self.ending: str | None = None  # completed | budget_exhausted | gave_up (FINAL_ENDINGS) | failed | stopped
        self.budgets = BudgetWatch(config, self.mailbox)
        self.culprits = Culprits(self.state_dir)  # proven protocol breakers: never drawn again

    # ---------------------------------------------------------------------------------------------
    # startup, shutdown
    def recover(self) -> Checkpoint:
        abandoned = self.roundlog.recover()
        last = self.roundlog.last_completed()
        if last is None:
            removed = self.store.discard_after(0)
            try:
                ckpt = self.store.load(0)
            except CheckpointError:  # none yet (or unreadable): round 0 is derived again from the base model
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
        self.mailbox.publish(ckpt)
        return ckpt

    def linger(self, max_s: float) -> None:
        """After the last round: keep serving until every connected client has been told ``Done``."""
        end = time.monotonic() + max_s if self.ending in FINAL_ENDINGS else 0.0  # no Done: nobody to tell
        with self._cv:
            while time.monotonic() < end and not self.mailbox.everyone_told_done():
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
        rounds, limit = self.config.federation.rounds, self.config.attempts_limit
        try:
            while not self._stop.is_set():
                done = self.roundlog.completed_rounds()
                if done >= rounds:
                    break
                if self.roundlog.attempt_count() >= limit:
                    if self._wait_for_clients(patience_s=0.0) or self.ending is None:  # budgets say why, if they can
                        out = left_out(self.mailbox, self.mailbox.connected(), self.culprits.excluded)
                        why = give_up_cause(self.roundlog.attempts(limit=limit), out)
                        self.error = f"gave up after {limit} attempts ({done}/{rounds} rounds completed; max_attempts): {why}"
                        self.ending = "gave_up"
                    break
                if not self._wait_for_clients():
                    break
                self._run_attempt()
        except SecureFedError as exc:  # a full disk: stop without a Done (members wait for the restart)
            self.error = self.error or str(exc)
            raise
        finally:
            ok = conclude(self, rounds)
            self.state = ServerState.FINISHED if ok or self.ending == "budget_exhausted" else ServerState.FAILED
        return ok

    def _wait_for_clients(self, patience_s: float | None = None) -> bool:
        need = self.config.federation.min_clients
        deadline = time.monotonic() + (self.config.deadlines.join_s if patience_s is None else patience_s)
        with self._cv:
            self.state = ServerState.WAITING
            while not self._stop.is_set():
                n = len(connected := self.mailbox.connected())
                exhausted, out = self.mailbox.exhausted(), left_out(self.mailbox, connected, self.culprits.excluded)
                usable = [c for c in connected if c not in exhausted and c not in out]
                self.detail = f"{n}/{need} clients connected{can_take_part(usable, out)}"
                if len(usable) >= need:
                    return True
                if exhausted and n - len(set(out) & set(connected)) >= need:  # too few whose budget allows a round
                    if self.budgets.stops:
                        self.error = self.budgets.ending(connected, exhausted, self.roundlog.completed_rounds())
                        self.ending = "budget_exhausted"
                        return False
                    if patience_s == 0.0:
                        return False
                    self.detail = self.budgets.waiting_detail(exhausted, connected)
                    deadline = time.monotonic() + self.config.deadlines.join_s  # not a join timeout
                    self._cv.wait(1.0)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    self.error = (f"only {n} of min_clients={need} clients connected within "
                                  f"{self.config.deadlines.join_s:g} s{can_take_part(usable, out)}")
                    log(logger, "not enough clients", connected=n, min_clients=need)
                    return False
                self._cv.wait(min(left, 1.0))
        return False

    def _new_attempt(self) -> AttemptContext:
        """A fresh attempt at the next round, with a cohort drawn from the connected clients whose
        budget still allows a round."""
        assert self.global_ckpt is not None
        ckpt = self.global_ckpt
        attempt = self.roundlog.begin_attempt(round=ckpt.round + 1, mode=self.config.federation.mode.value,
                                              base_hash=ckpt.digest, stage="plan")
        with self._cv:
            exhausted, out = self.mailbox.exhausted(), left_out(self.mailbox, self.mailbox.connected(), self.culprits.excluded)
            pool = [c for c in self.mailbox.connected() if c not in exhausted and c not in out]
            k = min(self.config.federation.cohort_size, len(pool))
            # Selection need not be secret, but a CSPRNG costs nothing and resists grinding.
            cohort = tuple(sorted(secrets.SystemRandom().sample(pool, k)))
            members = self.mailbox.clients
            return AttemptContext(
                attempt=attempt, round=ckpt.round + 1, config=self.config, cohort=cohort,
                identity_keys={c: members[c].identity_key for c in cohort}, global_ckpt=ckpt,
                payload_length=self._payload_length(ckpt.vector.size), plan=pb.RoundPlan(),
                certificates={c: members[c].certificate for c in cohort},
            )

    def _run_attempt(self) -> None:
        wait_until_idle(self.mailbox, self.config.deadlines, self._stop.is_set)  # or a busy member misses the plan
        ctx = self._new_attempt()
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        try:
            outcome = self._run_phases(ctx, timings)
            self._commit(ctx, outcome, timings, t0)
            self.budgets.round_completed()
        except DiskWriteError:  # the server's own disk: no abort to record, stop (a restart resumes)
            raise
        except SecureFedError as exc:  # ProtocolAbort, a refused message, bad parameters for this cohort
            self._abort(ctx, exc, timings, t0)
        finally:
            self.budgets.note(ctx)
            note_attempt(self.mailbox, ctx, lost=ctx.dropouts)
            self.culprits.note(ctx)

    def _run_phases(self, ctx: AttemptContext, timings: dict[str, float]) -> RoundOutcome:
        """Plan, then the mode's stages, each until everyone answered or its deadline passed."""
        with self._cv:
            ctx.plan = self._build_plan(ctx)
            driver = self._driver_factory(ctx)
            self.state = ServerState.RUNNING
            phase: Phase | None = driver.first_phase()
            # The round log names a stage before any client can act in it (status and crash forensics
            # never lag behind what clients were told).
            self.roundlog.update_attempt(ctx.attempt, cohort=list(ctx.cohort), stage=STAGE_NAMES[phase.stage],
                                         session_id=ctx.plan.plan_sha256.hex())
            self.mailbox.open(ctx, driver, phase)
        log(logger, "attempt started", attempt=ctx.attempt, round=ctx.round, mode=self.config.federation.mode.value,
            cohort=list(ctx.cohort), global_digest=ctx.global_ckpt.digest[:16])
        while True:
            assert phase is not None
            lost = self._wait_phase(phase)
            with self._cv:
                timings[STAGE_NAMES[phase.stage]] = round(time.monotonic() - phase.started, 4)
                silent = sorted(phase.expected - phase.responded)
                if silent:
                    ctx.dropouts.update(silent)
                    early = {c: lost[c] for c in silent if c in lost}
                    log(logger, "stage closed early: dropouts" if len(early) == len(silent) else "stage deadline: dropouts",
                        level=logging.WARNING, attempt=ctx.attempt, round=ctx.round, stage=STAGE_NAMES[phase.stage],
                        dropouts=silent, why={c: early.get(c, "silent at the stage deadline") for c in silent})
                result = close_phase(driver, phase, silent, lost)
                outcome = result if isinstance(result, RoundOutcome) else None
                phase = None if outcome is not None else result
                self.roundlog.update_attempt(
                    ctx.attempt, stage="apply" if phase is None else STAGE_NAMES[phase.stage], timings=timings,
                    dropouts=sorted(ctx.dropouts), declined=ctx.declined, bytes_in=ctx.bytes_in,
                    bytes_out=ctx.bytes_out,
                )
                if outcome is not None:
                    self.state = ServerState.AGGREGATING
                self.mailbox.show(phase)
            if self._stop.is_set():
                raise ProtocolAbort("server shutting down")
            if outcome is not None:
                return outcome

    def _wait_phase(self, phase: Phase) -> dict[str, str]:
        """Until everyone answered, the deadline, or every member still missing is lost (dead or
        refused); returns the lost ones, with why."""
        lost: dict[str, str] = {}
        with self._cv:
            while not self._stop.is_set() and not phase.complete():
                lost = self.mailbox.lost(phase)
                if phase.expected <= phase.responded | lost.keys():
                    return lost
                left = phase.deadline - time.monotonic()
                if left <= 0 and not extend_for_work(self.mailbox, phase, self.config.deadlines):
                    return lost
                self._cv.wait(min(max(left, 0.05), 0.25))
        return lost

    def _commit(self, ctx: AttemptContext, outcome: RoundOutcome, timings: dict[str, float], t0: float) -> None:
        """Apply the sum, write the checkpoint, then mark the attempt completed (in that order)."""
        fault_point("before_apply", ctx.attempt)
        t_apply = time.monotonic()
        new_vec, new_state = self._apply(ctx.global_ckpt.vector, outcome.sums, ctx, outcome)
        ckpt = self.store.save(ctx.round, new_vec, ctx.global_ckpt.layout_json, self.settings_json, new_state)
        fault_point("after_checkpoint", ctx.attempt)
        timings["apply"] = round(time.monotonic() - t_apply, 4)
        timings["total"] = round(time.monotonic() - t0, 4)
        self.roundlog.update_attempt(ctx.attempt, survivors=list(outcome.contributors), timings=timings,
                                     bytes_in=ctx.bytes_in, bytes_out=ctx.bytes_out)
        self.roundlog.complete_attempt(ctx.attempt, result_hash=ckpt.digest, checkpoint=str(ckpt.path))
        with self._cv:
            self.global_ckpt = ckpt
            self.mailbox.publish(ckpt)
            self.mailbox.close(ctx, aggregate_ready=pb.AggregateReady(total_size=ckpt.vector.nbytes,
                                                                 sha256=bytes.fromhex(ckpt.digest)))
            self.state = ServerState.WAITING
        log(logger, "round completed", attempt=ctx.attempt, round=ctx.round, contributors=list(outcome.contributors),
            dropouts=sorted(ctx.dropouts), declined=sorted(ctx.declined), timings=timings,
            bytes_in=ctx.bytes_in, bytes_out=ctx.bytes_out, global_digest=ckpt.digest[:16])

    def _abort(self, ctx: AttemptContext, exc: SecureFedError, timings: dict[str, float], t0: float) -> None:
        """Nothing is released: log why, drop any uncommitted checkpoint, tell the cohort."""
        self.failed_attempts += 1
        timings["total"] = round(time.monotonic() - t0, 4)
        try:
            self.roundlog.update_attempt(ctx.attempt, timings=timings, dropouts=sorted(ctx.dropouts),
                                         declined=ctx.declined, bytes_in=ctx.bytes_in, bytes_out=ctx.bytes_out)
        except RoundLogError:
            pass
        self.roundlog.abort_attempt(ctx.attempt, reason=str(exc))
        self.store.discard_after(ctx.global_ckpt.round)
        with self._cv:
            self.mailbox.close(ctx, aborted=pb.RoundAborted(reason=str(exc)))
            self.state = ServerState.WAITING
        log(logger, "attempt aborted: the round will be tried again by a new attempt", level=logging.WARNING,
            attempt=ctx.attempt, round=ctx.round, reason=str(exc), dropouts=sorted(ctx.dropouts),
            declined=sorted(ctx.declined), timings=timings)

    # ---------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the coordinator is doing now (GetStatus, ``live.json``): ``livestatus.status_of``."""
        return status_of(self)
