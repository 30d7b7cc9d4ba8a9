"""What ``securefed status`` tells an operator on day two (issue 19): a server that is starting is
"starting", not "not running"; once the server is gone no member is "connected"; epsilon comes from
the members' signed ledger entries (a heartbeat's figure only until there is one, and marked); a
heartbeat is a sign of life; a revoked member is named revoked, not just "gone"."""

from __future__ import annotations

import json
import os
import time

import pytest
from test_server_status import _coordinator, _status

from securefed.server.exclusion import mark_revoked
from securefed.server.livestatus import LIVE_FILE, StartingBeacon, snapshot, write_live
from securefed.transport._generated import federation_pb2 as pb


def test_a_starting_server_is_starting_then_running_or_stopped(tmp_path):
    state = tmp_path / "state"
    with StartingBeacon(state, interval_s=0.05):
        time.sleep(0.2)
        out = _status(state)  # a first start: no round log yet, and status says what it can
        assert out.startswith(f"server: starting (pid {os.getpid()}")
        assert "now: starting: reading certificates, fingerprinting the base model" in out
    with pytest.raises(RuntimeError):
        with StartingBeacon(state, interval_s=0.05):
            raise RuntimeError("the certificate expired")
    out = _status(state)
    assert out.startswith("server: stopped")  # it did not start: said at once, not after 10 s of silence


def _beat(co, name, attempt=0, eps=0.0):
    co.mailbox.heartbeat(name, pb.MemberHeartbeat(header=pb.RequestHeader(client_id=name, round=attempt),
                                                  activity=pb.MEMBER_ACTIVITY_WAITING, epsilon_spent=eps,
                                                  target_epsilon=8.0))


def test_members_of_a_stopped_server_are_not_connected_and_epsilon_is_the_signed_one(tmp_path):
    co = _coordinator(tmp_path)
    state = tmp_path / "state"
    try:
        before = co.mailbox.clients["a"].last_seen_wall
        time.sleep(0.05)
        _beat(co, "a", eps=2.5)
        assert co.mailbox.clients["a"].last_seen_wall > before  # a heartbeat is a sign of life
        data = snapshot(co)
        write_live(state / LIVE_FILE, data)
        st = json.loads(_status(state, as_json=True))
        a = st["members"]["a"]
        assert a["connected"] is True and "reported_epsilon" not in a
        assert a["epsilon"] == 2.5 and a["epsilon_source"].startswith("heartbeat")
        row = next(ln for ln in _status(state).splitlines() if ln.startswith("a "))
        assert "2.5 of 8 (said)" in row and "connected" in row
        # The server stops: what status shows of its members is what it last knew, not "connected".
        data["server"]["running"] = False
        write_live(state / LIVE_FILE, data)
        out = _status(state)
        row = next(ln for ln in out.splitlines() if ln.startswith("a "))
        assert out.startswith("server: stopped") and "unknown: the server is not running" in row
        assert "connected" not in row
        assert json.loads(_status(state, as_json=True))["members"]["a"]["connected"] is None
    finally:
        co.roundlog.close()


def test_a_revoked_member_is_named_revoked(tmp_path):
    co = _coordinator(tmp_path)
    state = tmp_path / "state"
    try:
        mark_revoked(co.mailbox, "c", "serial 1f")
        write_live(state / LIVE_FILE, snapshot(co))
        row = next(ln for ln in _status(state).splitlines() if ln.startswith("c "))
        assert "REVOKED (serial 1f)" in row and "never drawn again" in row
    finally:
        co.roundlog.close()


@pytest.mark.parametrize("ending, says", [
    ("completed", "the federation is finished (all rounds completed; members were told)"),
    ("budget_exhausted", "the federation is over, budget exhausted ("),
    ("stopped", "the federation is not over: a restart resumes it"),
    (None, "the federation is not over: a restart resumes it"),
])
def test_a_stopped_server_says_whether_the_federation_is_over(tmp_path, ending, says):
    """A finished federation is not shown as a server that merely stopped (the by-hand trial's status)."""
    co = _coordinator(tmp_path)
    state = tmp_path / "state"
    try:
        data = snapshot(co)
        data["server"]["running"] = False
        data["status"].update(ending=ending, detail="all rounds completed" if ending == "completed" else "x\x1b[2J")
        write_live(state / LIVE_FILE, data)
        first = _status(state).splitlines()[0]
        assert first.startswith("server: stopped") and says in first
        assert "\x1b" not in first  # the detail is printed inert
    finally:
        co.roundlog.close()
