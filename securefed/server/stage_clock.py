"""When a stage stops waiting, what a member is told about an attempt that ended, and when the next starts.

* **The plan stage follows the work.** Its deadline (``deadlines.training_s``) covers each member's local
  training, whose length the server cannot know (model, data, hardware). A member whose heartbeats
  report training progress for this attempt (step i of n) is waited for past that deadline, up to its
  finish projected from its own step rate plus a margin for masking and answering, never past
  ``deadlines.training_max_s``; a member projected to finish after that, or reporting no step, is a
  dropout at the deadline as before. So a slow honest member is not dropped mid-training, and a dead
  or stalled one still costs only the silence window (``liveness``).
* **An ended attempt is over at once.** A heartbeat about an attempt that is closed, or that went on
  without its sender, is answered ``attempt_over``: the member stops training it at its next step.
* **The next attempt waits for the cohort.** A member whose last heartbeat says it is still busy with an
  ended attempt (and has not polled since) would miss the next plan and be dropped as silent; the round
  loop waits for such members first (at most ``deadlines.training_s``).
* **A failure names the deadline that fired**, so the operator knows which setting to raise.

Pure functions over the mailbox's records; callers hold (or these take) the coordinator's lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from securefed.errors import ProtocolAbort
from securefed.logs import get_logger, log
from securefed.protocol.stages import stage_name
from securefed.server.attempt import Phase, RoundOutcome
from securefed.server.config import DeadlinesSection
from securefed.server.liveness import ClientInfo
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.coordinator")

MIN_MARGIN_S = 30.0  # after its last step a member still masks, signs and sends its round keys
MARGIN_FRACTION = 0.1
WORKING = (pb.MEMBER_ACTIVITY_PREPARING, pb.MEMBER_ACTIVITY_TRAINING, pb.MEMBER_ACTIVITY_PROTECTING)


def projected_finish(started: float, hb: pb.MemberHeartbeat | None, hb_at: float, attempt: int,
                     now: float) -> float | None:
    """When a member will have trained for ``attempt``, from its last heartbeat about it (monotonic time;
    ``now`` once it reports protecting its update); None when it reports no progress to project from."""
    if hb is None or hb.header.round != attempt:
        return None
    if hb.activity == pb.MEMBER_ACTIVITY_PROTECTING:  # trained: masking and sending its keys remain
        return now
    if hb.activity != pb.MEMBER_ACTIVITY_TRAINING or hb.step < 1 or hb.total_steps < hb.step:
        return None
    # Seconds per step since the plan was handed out, model loading included: an overestimate.
    return started + max(hb_at - started, 0.0) / hb.step * hb.total_steps


def extended_deadline(started: float, deadline_s: float, cap_s: float, finishes: dict[str, float | None],
                      now: float) -> tuple[float | None, dict[str, float], dict[str, float]]:
    """(new deadline in seconds after ``started`` or None to close now, members waited for with their
    projected answer, members projected to finish training past the cap)."""
    cap = started + max(cap_s, deadline_s)
    waiting = {c: t + max(MIN_MARGIN_S, MARGIN_FRACTION * (t - started))
               for c, t in finishes.items() if t is not None and t <= cap}
    too_late = {c: t for c, t in finishes.items() if t is not None and t > cap}
    if not waiting:
        return None, waiting, too_late
    # A member slower than projected is re-projected at the next deadline, from its newer heartbeat.
    end = min(max(max(waiting.values()), now + MIN_MARGIN_S / 6), cap)
    if end <= now:
        return None, waiting, too_late
    return end - started, waiting, too_late


def extend_for_work(mailbox, phase: Phase, deadlines: DeadlinesSection) -> bool:
    """At the plan stage's deadline: keep it open for members whose training progress projects an answer
    within ``training_max_s`` (True), or let it close (False). Call under the coordinator's lock."""
    ctx = mailbox.ctx
    if phase.stage != pb.STAGE_PLAN or ctx is None:
        return False
    now = time.monotonic()
    missing = sorted(phase.expected - phase.responded - set(ctx.declined))
    infos: dict[str, ClientInfo] = mailbox.clients
    finishes = {c: projected_finish(phase.started, infos[c].heartbeat, infos[c].heartbeat_at, ctx.attempt, now)
                for c in missing if c in infos}
    new_s, waiting, too_late = extended_deadline(phase.started, phase.deadline_s, deadlines.training_max_s,
                                                 finishes, now)
    if too_late:
        log(logger, "stage deadline: not waiting for members projected to finish training too late",
            level=logging.WARNING, attempt=ctx.attempt, stage=stage_name(phase.stage),
            projected_s={c: round(t - phase.started) for c, t in too_late.items()},
            training_max_s=deadlines.training_max_s)
    if new_s is None:
        return False
    log(logger, "stage deadline extended: members report training progress", attempt=ctx.attempt,
        stage=stage_name(phase.stage), deadline_s=round(new_s, 1), was_s=round(phase.deadline_s, 1),
        projected_s={c: round(t - phase.started) for c, t in waiting.items()}, training_max_s=deadlines.training_max_s)
    phase.deadline_s = new_s
    return True


def attempt_over(mailbox, client: str, attempt: int) -> bool:
    """Whether ``attempt`` (as a member names it in a heartbeat) is over for ``client``."""
    if attempt == 0:
        return False
    with mailbox._cv:
        ctx = mailbox.ctx
        if ctx is None or ctx.attempt != attempt:
            return True
        return (client not in ctx.cohort or client in ctx.dropouts or client in ctx.declined
                or client in mailbox.liveness.refused)


def busy_elsewhere(mailbox, silence_s: float) -> dict[str, int]:
    """Connected members still working on an attempt that is not the live one (their last heartbeat
    says so, it is recent, and they have not polled since), with that attempt."""
    now = time.monotonic()
    live = mailbox.ctx.attempt if mailbox.ctx is not None else 0
    out = {}
    for c in mailbox.connected():
        info: ClientInfo = mailbox.clients[c]
        hb = info.heartbeat
        if (hb is not None and hb.header.round not in (0, live) and hb.activity in WORKING
                and now - info.heartbeat_at <= silence_s and info.polled_at < info.heartbeat_at):
            out[c] = int(hb.header.round)
    return out


def wait_until_idle(mailbox, deadlines: DeadlinesSection, stopped: Callable[[], bool]) -> dict[str, int]:
    """Before the next attempt: wait (at most ``training_s``) while members are busy with an ended one;
    returns those still busy when it gave up."""
    end = time.monotonic() + deadlines.training_s
    told = False
    with mailbox._cv:
        while not stopped():
            busy = busy_elsewhere(mailbox, deadlines.silence_s)
            if not busy or time.monotonic() >= end:
                return busy
            if not told:
                log(logger, "waiting for members still busy with an ended attempt before the next one", busy=busy)
                told = True
            mailbox._cv.wait(0.5)
    return {}


def close_phase(driver, phase: Phase, silent: list[str], lost: dict[str, str]) -> Phase | RoundOutcome:
    """``driver.finish_phase``; an abort after members fell silent at the deadline says which deadline."""
    try:
        return driver.finish_phase(phase)
    except ProtocolAbort as exc:
        at_deadline = [c for c in silent if c not in lost]
        if not at_deadline or not phase.deadline_key:
            raise
        also = ", and training_max_s for members reporting progress" if phase.deadline_key == "training_s" else ""
        raise ProtocolAbort(f"{exc} ({', '.join(at_deadline)} had not answered when the {stage_name(phase.stage)} "
                            f"stage closed after {phase.deadline_s:g} s: deadlines.{phase.deadline_key}{also}; raise "
                            "it if members need longer)") from None
