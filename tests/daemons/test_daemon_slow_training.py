"""The issue's first real-model run, in small: members whose local training outlasts ``deadlines.training_s``.
Real daemons (threads of this process, gRPC over mutual TLS, DP-SGD with Opacus on the tiny model), with
each training step slowed down so that training takes several times the deadline.

* With room (``training_max_s``), the plan stage waits for members that report progress: the round completes.
* Without it (the control, the issue's situation), the attempt aborts naming ``deadlines.training_s``, the
  members stop training it within a step or two of the abort (``HeartbeatAck.attempt_over``) and release
  nothing, and the next attempt is not lost to members still busy with the last one.
"""

from __future__ import annotations

import threading
import time

import pytest
from daemon_helpers import FAST_CLIENT, fast_server

from securefed.client import heartbeat as hb_module
from securefed.federation import provision, run_in_process
from securefed.privacy.ledger import load_ledger
from securefed.server.roundlog import AttemptStatus, RoundLog

pytestmark = pytest.mark.slow

STEPS = 12
STEP_S = 0.4  # added to every training step: 12 steps take ~5 s against a 1.5 s deadline


@pytest.mark.parametrize("room", [True, False])
def test_members_training_longer_than_the_deadline(tmp_path, tiny_model, monkeypatch, room):
    steps: list[tuple[int, int]] = []  # (attempt, step) as members report them
    lock = threading.Lock()
    real_step = hb_module.Heartbeat.training_step

    def slow_step(self, step: int, total: int) -> None:
        time.sleep(STEP_S)
        real_step(self, step, total)  # raises AttemptEnded once the server said the attempt is over
        with lock:
            steps.append((self._attempt_fn(), step))

    monkeypatch.setattr(hb_module.Heartbeat, "training_step", slow_step)
    client = {**FAST_CLIENT, "training": {**FAST_CLIENT["training"], "steps": STEPS}}
    server = fast_server(training_s=1.5, training_max_s=120.0 if room else 1.5, heartbeat_s=0.5)
    server["federation"]["max_attempts"] = 2
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model, server=server,
                  client=client)
    res = run_in_process(p, timeout_s=120)
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    attempts = log.attempts()
    log.close()
    events = {m: len(load_ledger(p.root / "clients" / m / "ledger.sqlite").events) for m in p.client_tomls}
    if room:
        assert res.ok and [a.status for a in attempts] == [AttemptStatus.COMPLETED]
        assert max(s for a, s in steps if a == 1) == STEPS and events == {m: 1 for m in events}
        return
    assert not res.ok and [a.status for a in attempts] == [AttemptStatus.ABORTED] * 2
    for a in attempts:
        assert "deadlines.training_s" in a.reason, a.reason
        assert "no heartbeat" not in a.reason  # nobody is lost to a retry that started while it was busy
    # Each member stopped each attempt within a few steps of the abort (not after all 12), releasing nothing.
    for attempt in (1, 2):
        done = [s for a, s in steps if a == attempt]
        assert done and max(done) < STEPS - 2, (attempt, sorted(done))
    assert events == {m: 0 for m in events}
