"""Liveness and budgets in the coordinator's round loop, driven directly (no gRPC, no model): a dead
member is dropped after a few missed heartbeats, not at the stage deadline; a member the server
refused is not waited for; a federation whose members are all out of budget ends, saying so."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from securefed.config import parse_model
from securefed.errors import InvalidMessage
from securefed.server.config import ServerConfig
from securefed.server.roundlog import AttemptStatus
from securefed.transport._generated import federation_pb2 as pb

NAMES = ("a", "b", "c")


def _coordinator(tmp_path: Path, *, training_s: float = 600.0, rounds: int = 1, heartbeat_s: float = 0.2, **federation):
    from securefed.server.app import ServerApp

    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"rounds": rounds, "cohort_size": 3, "min_clients": 3, "threshold": 2, "mode": "plaintext",
                       "allow_plaintext_for_debugging": True, **federation},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "model": {"fingerprint": "ab" * 32},  # no weights on this server: the operator pins the base
        # A stage deadline of 10 minutes: only liveness can end these stages in seconds.
        "deadlines": {"training_s": training_s, "join_s": 10.0, "poll_s": 0.5, "heartbeat_s": heartbeat_s,
                      "missed_heartbeats": 3},
    })
    co = ServerApp(cfg).coordinator
    layout = '{"tensors":[],"version":1}'
    co._initial_adapter = lambda: (np.zeros(6, np.float32), layout, co.settings_json, None)
    co.recover()
    for i, n in enumerate(NAMES):
        co.mailbox.register(n, bytes([i + 1]) * 32)
    return co


def _hdr(name: str, plan: pb.RoundPlan, seq: int, stage=pb.STAGE_PLAN) -> pb.RequestHeader:
    return pb.RequestHeader(client_id=name, session_id=plan.plan_sha256, round=plan.round, stage=stage, sequence=seq)


def _upload(co, name: str, plan: pb.RoundPlan, value: float) -> None:
    from securefed.crypto.fixedpoint import FixedPointParams, encode

    fp = FixedPointParams(clip=plan.secagg.clip, frac_bits=plan.secagg.frac_bits, ring_bits=plan.secagg.ring_bits)
    enc, _ = encode(np.array([value] * 6 + [0.5]), fp)
    co.mailbox.submit(name, pb.SubmitResultRequest(header=_hdr(name, plan, 1), plan_decision=pb.PlanDecision(participate=True)))
    dtype = "<u4" if fp.ring_bits == 32 else "<u8"
    co.mailbox.upload_masked(name, _hdr(name, plan, 2, pb.STAGE_PLAINTEXT_UPLOAD), fp.ring_bits, enc.astype(dtype).tobytes())


def _beat(co, name: str, plan: pb.RoundPlan, step: int = 1) -> None:
    co.mailbox.heartbeat(name, pb.MemberHeartbeat(header=pb.RequestHeader(client_id=name, round=plan.round),
                                                  activity=pb.MEMBER_ACTIVITY_TRAINING, step=step, total_steps=10))


def _run(co) -> tuple[threading.Thread, dict]:
    out: dict = {}
    th = threading.Thread(target=lambda: out.setdefault("ok", co.run()), daemon=True)
    th.start()
    return th, out


def test_a_member_that_stops_sending_heartbeats_is_dropped_in_seconds_not_at_the_deadline(tmp_path):
    co = _coordinator(tmp_path)
    th, out = _run(co)
    try:
        plans = {n: co.mailbox.poll(n, 3.0, attempt=0).plan for n in NAMES}
        t0 = time.monotonic()
        for n in ("a", "b"):
            _upload(co, n, plans[n], 0.1)
        # "c" accepted, then died mid-training: no heartbeat, no poll, nothing more.
        co.mailbox.submit("c", pb.SubmitResultRequest(header=_hdr("c", plans["c"], 1),
                                                      plan_decision=pb.PlanDecision(participate=True)))
        th.join(15)
        assert not th.is_alive(), "the round waited for the dead member (stage deadline 600 s)"
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.COMPLETED and rec.dropouts == ("c",) and set(rec.survivors) == {"a", "b"}
        assert time.monotonic() - t0 < 10 and rec.timings["plan"] < 10  # 3 missed 0.2 s heartbeats, not 600 s
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_a_member_sending_heartbeats_is_waited_for_while_it_trains(tmp_path):
    # The control: the same silence window, but "c" keeps beating while it trains for 2 s (10 windows).
    co = _coordinator(tmp_path)
    th, out = _run(co)
    try:
        plans = {n: co.mailbox.poll(n, 3.0, attempt=0).plan for n in NAMES}
        for n in ("a", "b"):
            _upload(co, n, plans[n], 0.1)
        end = time.monotonic() + 2.0
        step = 0
        while time.monotonic() < end:
            step += 1
            _beat(co, "c", plans["c"], step)
            st = co.status()
            assert st["stage"] == "plan" and "c" not in st["dropouts"]
            time.sleep(0.1)
        from securefed.server.livestatus import members_of

        assert members_of(co)["c"]["activity"] == "training" and members_of(co)["c"]["step"] == step
        _upload(co, "c", plans["c"], 0.4)
        th.join(15)
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.COMPLETED and rec.dropouts == () and set(rec.survivors) == set(NAMES)
        np.testing.assert_allclose(co.global_ckpt.vector, np.full(6, 0.6 / 1.5), atol=1e-6)
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_a_member_whose_message_the_server_refused_is_not_waited_for(tmp_path):
    # Silence alone would take 3 minutes here (3 x 60 s): only the refusal can end the stage early.
    co = _coordinator(tmp_path, training_s=600.0, heartbeat_s=60.0)
    th, out = _run(co)
    try:
        plans = {n: co.mailbox.poll(n, 3.0, attempt=0).plan for n in NAMES}
        for n in ("a", "b"):
            _upload(co, n, plans[n], 0.1)
        # "c" answers for another plan: refused; it leaves the session (as a real member does).
        bad = pb.RequestHeader(client_id="c", session_id=b"x" * 32, round=plans["c"].round, stage=pb.STAGE_PLAN, sequence=1)
        try:
            co.mailbox.submit("c", pb.SubmitResultRequest(header=bad, plan_decision=pb.PlanDecision(participate=True)))
        except InvalidMessage:
            pass
        else:
            raise AssertionError("the server took a decision for another plan")
        # ... and keeps polling about no attempt, as a member that left does.
        t0 = time.monotonic()
        while th.is_alive() and time.monotonic() - t0 < 15:
            co.mailbox.poll("c", 0.1, attempt=0)
        assert not th.is_alive() and time.monotonic() - t0 < 15
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.COMPLETED and rec.dropouts == ("c",)
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def _decline_all(co, kind: int, reason: str) -> pb.RoundPlan:
    plans = {n: co.mailbox.poll(n, 5.0, attempt=0).plan for n in NAMES}
    for n in NAMES:
        co.mailbox.submit(n, pb.SubmitResultRequest(header=_hdr(n, plans[n], 1), plan_decision=pb.PlanDecision(
            participate=False, decline_reason=reason, decline_kind=kind)))
    return plans["a"]


@pytest.mark.parametrize("max_attempts", [None, 1])  # 9 by default; with 1, the budget still says why it ended
def test_when_every_member_declines_for_budget_the_federation_ends_saying_so(tmp_path, max_attempts):
    co = _coordinator(tmp_path, rounds=3, max_attempts=max_attempts)
    th, out = _run(co)
    try:
        _decline_all(co, pb.PLAN_DECLINE_KIND_PRIVACY_BUDGET, "privacy budget: the privacy budget is spent")
        th.join(15)
        assert not th.is_alive() and out["ok"] is False
        assert co.ending == "budget_exhausted" and co.roundlog.attempt_count() == 1  # no attempts burnt
        assert co.detail.startswith("privacy budget exhausted for all members after 0 of 3 rounds")
        assert "a: privacy budget" in co.detail
        done = [co.mailbox.poll(n, 0.5) for n in NAMES]
        assert [t.WhichOneof("body") for t in done] == ["aborted"] * 3  # the attempt's outcome, then Done
        assert co.mailbox.poll("a", 0.5).done.reason == co.detail
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_declines_for_other_reasons_do_not_end_the_federation(tmp_path):
    # The control: the same three declines with a policy reason are not a budget: a new attempt starts.
    co = _coordinator(tmp_path, rounds=3)
    th, out = _run(co)
    try:
        first = _decline_all(co, pb.PLAN_DECLINE_KIND_POLICY, "cohort below this member's minimums")
        for n in NAMES:
            assert co.mailbox.poll(n, 5.0, attempt=0).WhichOneof("body") == "aborted"
        nxt = co.mailbox.poll("a", 5.0, attempt=0)
        assert nxt.WhichOneof("body") == "plan" and nxt.plan.round == first.round + 1
        assert nxt.plan.federation_round == first.federation_round == 1  # a new attempt at the same round
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_wait_mode_asks_again_after_a_backoff_and_at_once_after_a_restart(tmp_path):
    co = _coordinator(tmp_path, rounds=3, on_budget_exhausted="wait", budget_retry_s=30.0)
    th, out = _run(co)
    try:
        _decline_all(co, pb.PLAN_DECLINE_KIND_PLANNED_ROUNDS_DONE, "planned rounds done: this member ...")
        for n in NAMES:
            assert co.mailbox.poll(n, 5.0, attempt=0).WhichOneof("body") == "aborted"
        time.sleep(1.0)
        assert co.roundlog.attempt_count() == 1 and th.is_alive()
        assert co.status()["detail"].startswith("waiting: privacy budget exhausted for 3 of 3 members")
        for n in NAMES:  # restarted (a larger budget, say): registering again lifts the mark at once
            co.mailbox.register(n, bytes([NAMES.index(n) + 1]) * 32)
        assert co.mailbox.poll("a", 5.0, attempt=0).WhichOneof("body") == "plan"
        assert co.roundlog.attempt_count() == 2
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()
