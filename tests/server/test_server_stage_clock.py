"""Stage deadlines that follow the work (members reporting training progress are waited for, up to
``training_max_s``), attempts that end for members at once (``HeartbeatAck.attempt_over``), the next
attempt waiting for a cohort still busy with the last, and aborts that name the deadline that fired."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from securefed.client.heartbeat import Heartbeat
from securefed.config import parse_model
from securefed.errors import AttemptEnded
from securefed.server.app import ServerApp
from securefed.server.config import ServerConfig
from securefed.server.roundlog import AttemptStatus
from securefed.server.stage_clock import (
    MIN_MARGIN_S,
    attempt_over,
    busy_elsewhere,
    extended_deadline,
    projected_finish,
    wait_until_idle,
)
from securefed.transport._generated import federation_pb2 as pb

NAMES = ("a", "b", "c")


def _hb(attempt: int, activity=pb.MEMBER_ACTIVITY_TRAINING, step: int = 0, total: int = 0) -> pb.MemberHeartbeat:
    return pb.MemberHeartbeat(header=pb.RequestHeader(round=attempt), activity=activity, step=step, total_steps=total)


def test_a_training_member_is_projected_from_its_own_step_rate():
    # Step 4 of 24 reported 40 s after the plan: 10 s a step, so training ends 240 s after it.
    assert projected_finish(100.0, _hb(7, step=4, total=24), 140.0, 7, now=141.0) == 340.0
    assert projected_finish(0.0, _hb(7, pb.MEMBER_ACTIVITY_PROTECTING), 5.0, 7, now=9.0) == 9.0
    for hb in (None, _hb(6, step=4, total=24), _hb(7, pb.MEMBER_ACTIVITY_PREPARING), _hb(7, step=0, total=24),
               _hb(7, pb.MEMBER_ACTIVITY_WAITING, 3, 3)):
        assert projected_finish(0.0, hb, 5.0, 7, now=6.0) is None  # nothing to project: the deadline stands


def test_the_deadline_waits_for_projected_answers_up_to_the_cap_only():
    # After its training a member still masks and sends its keys: a margin of 30 s or 10% of the work.
    new, waiting, late = extended_deadline(0.0, 120.0, 900.0, {"a": 300.0, "b": None, "c": 2000.0}, now=121.0)
    assert new == 300.0 + MIN_MARGIN_S and waiting == {"a": new} and late == {"c": 2000.0}
    assert extended_deadline(0.0, 120.0, 900.0, {"a": 800.0}, now=121.0)[0] == 880.0
    assert extended_deadline(0.0, 120.0, 900.0, {"a": 890.0}, now=121.0)[0] == 900.0  # never past the cap
    assert extended_deadline(0.0, 120.0, 900.0, {"b": None, "c": 2000.0}, now=121.0)[0] is None
    # A member slower than projected gets a little more time at each deadline.
    new, _, _ = extended_deadline(0.0, 120.0, 900.0, {"a": 100.0}, now=140.0)
    assert 140.0 < new <= 900.0


def _coordinator(tmp_path: Path, *, training_s: float = 1.0, training_max_s: float = 30.0):
    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"rounds": 1, "cohort_size": 3, "min_clients": 3, "threshold": 2, "mode": "plaintext",
                       "allow_plaintext_for_debugging": True},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "deadlines": {"training_s": training_s, "training_max_s": training_max_s, "join_s": 10.0, "poll_s": 0.5},
        "model": {"fingerprint": "ab" * 32},
    })
    co = ServerApp(cfg).coordinator
    co._initial_adapter = lambda: (np.zeros(6, np.float32), '{"tensors":[],"version":1}', co.settings_json, None)
    co.recover()
    for i, n in enumerate(NAMES):
        co.mailbox.register(n, bytes([i + 1]) * 32)
    return co


def _upload(co, name: str, plan: pb.RoundPlan) -> None:
    from securefed.crypto.fixedpoint import FixedPointParams, encode

    fp = FixedPointParams(clip=plan.secagg.clip, frac_bits=plan.secagg.frac_bits, ring_bits=plan.secagg.ring_bits)
    enc, _ = encode(np.array([0.1] * 6 + [0.5]), fp)
    hdr = pb.RequestHeader(client_id=name, session_id=plan.plan_sha256, round=plan.round, stage=pb.STAGE_PLAN, sequence=1)
    co.mailbox.submit(name, pb.SubmitResultRequest(header=hdr, plan_decision=pb.PlanDecision(participate=True)))
    hdr = pb.RequestHeader(client_id=name, session_id=plan.plan_sha256, round=plan.round,
                           stage=pb.STAGE_PLAINTEXT_UPLOAD, sequence=2)
    co.mailbox.upload_masked(name, hdr, plan.secagg.ring_bits, enc.astype("<u4").tobytes())


def _attempt(co):
    th = threading.Thread(target=co._run_attempt, daemon=True)
    th.start()
    plans = {n: co.mailbox.poll(n, 3.0).plan for n in NAMES}
    return th, plans["a"]


@pytest.mark.parametrize("report_progress", [True, False])
def test_members_reporting_training_progress_keep_the_plan_stage_open(tmp_path, report_progress):
    """With progress the round completes after training_s; without it (the control) the attempt aborts at
    training_s and the reason names that setting."""
    co = _coordinator(tmp_path, training_s=1.0)
    try:
        th, plan = _attempt(co)
        if report_progress:
            for n in NAMES:
                co.mailbox.heartbeat(n, _hb(plan.round, step=1, total=3))
        time.sleep(2.0)  # past training_s
        rec = co.roundlog.attempts()[-1]
        if not report_progress:
            th.join(5)
            assert rec.status is AttemptStatus.ABORTED
            assert "deadlines.training_s" in rec.reason and "a, b, c had not answered" in rec.reason
            return
        assert rec.status is AttemptStatus.RUNNING and co.mailbox.ctx is not None
        for n in NAMES:
            _upload(co, n, plan)
        th.join(10)
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.COMPLETED and set(rec.survivors) == set(NAMES)
    finally:
        co.stop()
        co.roundlog.close()


def test_an_ended_attempt_is_over_for_its_members_and_the_next_waits_for_them(tmp_path):
    co = _coordinator(tmp_path, training_s=1.0)
    try:
        th, plan = _attempt(co)
        co.mailbox.heartbeat("a", _hb(plan.round, step=0, total=50))  # preparing-like: no step to project from
        assert not attempt_over(co.mailbox, "a", plan.round)
        assert attempt_over(co.mailbox, "a", plan.round + 1) and not attempt_over(co.mailbox, "a", 0)
        th.join(5)
        assert co.roundlog.attempts()[-1].status is AttemptStatus.ABORTED
        assert attempt_over(co.mailbox, "a", plan.round)
        # "a" is still training the aborted attempt (its last heartbeat says so; it has not polled since).
        co.mailbox.heartbeat("a", _hb(plan.round, step=2, total=50))
        assert busy_elsewhere(co.mailbox, co.config.deadlines.silence_s) == {"a": plan.round}
        got: dict = {}
        waiter = threading.Thread(target=lambda: got.setdefault("busy", wait_until_idle(
            co.mailbox, co.config.deadlines, lambda: False)))
        waiter.start()
        time.sleep(0.6)
        assert waiter.is_alive()  # the next attempt is not started under a busy member
        co.mailbox.poll("a", 0.1, attempt=0)  # it stopped and came back
        waiter.join(3)
        assert not waiter.is_alive() and got["busy"] == {}
        # Control: a member that never comes back is waited for at most training_s, then named.
        co.mailbox.heartbeat("b", _hb(plan.round, step=3, total=50))
        t0 = time.monotonic()
        assert wait_until_idle(co.mailbox, co.config.deadlines, lambda: False) == {"b": plan.round}
        assert 0.9 <= time.monotonic() - t0 < 3.0
    finally:
        co.stop()
        co.roundlog.close()


class _Link:
    """The member's connection as the heartbeat thread sees it: a header and one RPC."""

    def __init__(self, over: bool) -> None:
        self.over = over

    def header(self, attempt, stage, sequenced=False):
        return pb.RequestHeader(round=attempt, stage=stage)

    def call(self, name, req, timeout):
        return pb.HeartbeatAck(heartbeat_interval_ms=1000, attempt_over=self.over)


@pytest.mark.parametrize("over", [True, False])
def test_a_member_stops_training_at_its_next_step_once_the_server_says_the_attempt_is_over(over):
    current = [4]
    hb = Heartbeat(_Link(over), lambda: current[0], interval_s=1.0)
    hb.training_step(1, 10)
    hb._send(4)
    if over:
        with pytest.raises(AttemptEnded, match="ended attempt 4: stopped training it after step 2 of 10"):
            hb.training_step(2, 10)
        current[0] = 5  # the next attempt trains normally
    hb.training_step(2, 10)
    assert hb.step == 2 and hb.activity == pb.MEMBER_ACTIVITY_TRAINING
