"""Cohort selection after declines that cannot change, lost members and revocations (issue 19), in the
coordinator's round loop driven directly (no gRPC, no model). Each exclusion has its control: a
member that declined for its own policy, or that polls again after it was lost, is asked again."""

from __future__ import annotations

import time

import pytest
from test_server_liveness import NAMES, _coordinator, _hdr, _run, _upload

from securefed.server.exclusion import left_out, mark_revoked
from securefed.transport._generated import federation_pb2 as pb


def _plans(co, names=NAMES):
    return {n: co.mailbox.poll(n, 5.0, attempt=0).plan for n in names}


def _decline(co, name, plan, kind, reason):
    co.mailbox.submit(name, pb.SubmitResultRequest(header=_hdr(name, plan, 1), plan_decision=pb.PlanDecision(
        participate=False, decline_reason=reason, decline_kind=kind)))


def _next_plan(co, name, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t = co.mailbox.poll(name, 1.0, attempt=0)
        if t.WhichOneof("body") == "plan":
            return t.plan
    return None


@pytest.mark.parametrize("kind, left_out_next", [(pb.PLAN_DECLINE_KIND_BASE_MODEL, True),
                                                  (pb.PLAN_DECLINE_KIND_POLICY, False)])
def test_a_member_whose_base_model_differs_is_not_drawn_again_until_it_restarts(tmp_path, kind, left_out_next):
    co = _coordinator(tmp_path, rounds=2, min_clients=2)
    th, _ = _run(co)
    try:
        plans = _plans(co)
        _decline(co, "c", plans["c"], kind, "the plan's base model 1a2b... is not this member's 3c4d...")
        for n in ("a", "b"):
            _upload(co, n, plans[n], 0.1)
        nxt = _next_plan(co, "a")
        assert nxt is not None and nxt.federation_round == 2
        cohort = {m.client_id for m in nxt.cohort}
        assert ("c" not in cohort) is left_out_next
        if left_out_next:
            assert left_out(co.mailbox, ["c"])["c"].startswith("declined: the plan's base model 1a2b")
            co.mailbox.register("c", bytes([3]) * 32)  # restarted, perhaps with the right model: asked again
            assert "c" not in left_out(co.mailbox, co.mailbox.connected())
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_a_killed_member_costs_one_attempt_not_one_per_round(tmp_path):
    co = _coordinator(tmp_path, rounds=3, min_clients=2)
    th, _ = _run(co)
    try:
        plans = _plans(co)
        for n in ("a", "b"):
            _upload(co, n, plans[n], 0.1)
        # "c" took its plan and died: no heartbeat, no poll. Dropped in seconds (liveness), then left out.
        nxt = _next_plan(co, "a", timeout=15.0)
        assert nxt is not None and {m.client_id for m in nxt.cohort} == {"a", "b"}
        assert left_out(co.mailbox, co.mailbox.connected())["c"].startswith("lost in attempt 1")
        # Control: a member that polls again (it was only cut off, and is back) is drawn again.
        co.mailbox.poll("c", 0.1, attempt=0)
        assert "c" not in left_out(co.mailbox, co.mailbox.connected())
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_giving_up_names_the_cause(tmp_path):
    co = _coordinator(tmp_path, rounds=2, max_attempts=1)
    th, out = _run(co)
    try:
        plans = _plans(co)
        for n in NAMES:
            _decline(co, n, plans[n], pb.PLAN_DECLINE_KIND_LIBRARY_VERSIONS, "torch 2.13 here, the plan requires 2.9")
        th.join(15)
        assert not th.is_alive() and out["ok"] is False and co.ending == "gave_up"
        assert co.detail.startswith("gave up after 1 attempts (0/2 rounds completed; max_attempts): ")
        assert "a declined 1 of 1 attempts (torch 2.13 here, the plan requires 2.9)" in co.detail
        assert "left out now: a: declined: torch 2.13" in co.detail
        for n in NAMES:  # the attempt's outcome first, then the end, which says why
            assert co.mailbox.poll(n, 0.5).WhichOneof("body") == "aborted"
        done = co.mailbox.poll("a", 0.5).done
        assert done.ending == pb.FEDERATION_ENDING_GAVE_UP and done.reason == co.detail
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_a_member_revoked_during_an_attempt_is_out_at_once_and_named(tmp_path):
    co = _coordinator(tmp_path, rounds=1, min_clients=2, heartbeat_s=60.0)  # silence would take 3 minutes
    th, _ = _run(co)
    try:
        plans = _plans(co)
        for n in ("a", "b"):
            _upload(co, n, plans[n], 0.1)
        t0 = time.monotonic()
        mark_revoked(co.mailbox, "c", "serial 1f")  # what the servicer does when it refuses c's next call
        th.join(15)
        assert not th.is_alive() and time.monotonic() - t0 < 10  # not the 3 minutes of silence
        rec = co.roundlog.attempts()[-1]
        assert rec.dropouts == ("c",)
        assert left_out(co.mailbox, [])["c"] == "revoked: it can never take part again"  # named even when gone
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()
