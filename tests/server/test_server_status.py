"""``securefed status`` from a running coordinator's live state (no gRPC, no model): the stage open now,
bytes so far, each member's last sign of life and training progress; a silent status file is a dead
server, shown as dead, with its running attempt's clock stopped."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np

from securefed.config import parse_model
from securefed.server.config import ServerConfig
from securefed.server.livestatus import LIVE_FILE, LiveStatusWriter, read_live, write_live
from securefed.server.status_view import show
from securefed.transport._generated import federation_pb2 as pb


def _coordinator(tmp_path: Path):
    from securefed.server.app import ServerApp

    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"rounds": 1, "cohort_size": 3, "min_clients": 3, "threshold": 2, "mode": "plaintext",
                       "allow_plaintext_for_debugging": True},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "model": {"fingerprint": "ab" * 32},  # no weights on this server: the operator pins the base
        "deadlines": {"training_s": 600.0, "join_s": 10.0, "poll_s": 0.5, "heartbeat_s": 60.0},
    })
    co = ServerApp(cfg).coordinator
    co._initial_adapter = lambda: (np.zeros(6, np.float32), '{"tensors":[],"version":1}', co.settings_json, None)
    co.recover()
    for i, n in enumerate("abc"):
        co.mailbox.register(n, bytes([i + 1]) * 32)
    return co


def _status(state_dir: Path, as_json: bool = False) -> str:
    out = io.StringIO()
    assert show(state_dir, 1, last=5, as_json=as_json, watch=None, out=out) == 0
    return out.getvalue()


def test_status_shows_the_live_stage_bytes_and_member_progress_then_a_dead_server_as_dead(tmp_path):
    co = _coordinator(tmp_path)
    writer = LiveStatusWriter(co, interval_s=0.05)
    writer.start()
    th = threading.Thread(target=co.run, daemon=True)
    th.start()
    state = tmp_path / "state"
    try:
        plan = co.mailbox.poll("a", 3.0, attempt=0).plan
        hdr = pb.RequestHeader(client_id="a", session_id=plan.plan_sha256, round=plan.round, stage=pb.STAGE_PLAN, sequence=1)
        co.mailbox.submit("a", pb.SubmitResultRequest(header=hdr, plan_decision=pb.PlanDecision(participate=True)), 1234)
        co.mailbox.heartbeat("a", pb.MemberHeartbeat(header=pb.RequestHeader(client_id="a", round=plan.round),
                                                     activity=pb.MEMBER_ACTIVITY_TRAINING, step=3, total_steps=10,
                                                     epsilon_spent=1.5, target_epsilon=8.0))
        time.sleep(0.3)
        out = _status(state)
        assert out.startswith("server: running")
        assert "now: attempt 1 (round 1), stage plan" in out and "bytes in 1.2 KB" in out  # during the stage
        line_a = next(ln for ln in out.splitlines() if ln.startswith("a "))
        assert "s ago" in line_a and "training: step 3 of 10" in line_a and "of 8" in line_a
        data = json.loads(_status(state, as_json=True))
        assert data["server"]["alive"] and data["live"]["stage"] == "plan" and data["members"]["a"]["step"] == 3
        # The server "dies": its live file stops being rewritten, the process it names is gone (the
        # round log still says the attempt runs, as after kill -9).
        writer._stop.set()
        writer._thread.join(5)
        live = read_live(state)
        live["server"]["pid"] = 2 ** 22 + 12345  # above the pid range: no such process
        write_live(state / LIVE_FILE, live)
        out = _status(state)
        assert out.startswith("server: DEAD") and "a restart resumes" in out
        assert "now: attempt" not in out  # nothing is happening now
        row = next(ln for ln in out.splitlines() if ln.strip().startswith("1 "))
        assert " stalled " in row and "abandoned when it restarts" in row
        secs = float(row.split()[8])
        time.sleep(1.1)
        row2 = next(ln for ln in _status(state).splitlines() if ln.strip().startswith("1 "))
        assert float(row2.split()[8]) == secs  # its clock stopped with the server
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_watch_redraws_until_interrupted(tmp_path, monkeypatch):
    from securefed.server import status_view

    co = _coordinator(tmp_path)
    co.roundlog.close()
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt  # Ctrl-C: a clean exit, not a traceback or 130

    monkeypatch.setattr(status_view.time, "sleep", nap)
    out = io.StringIO()
    assert show(tmp_path / "state", 1, last=5, as_json=False, watch=0.5, out=out) == 0
    assert naps == [0.5, 0.5, 0.5] and out.getvalue().count("rounds completed: 0/1") == 3
