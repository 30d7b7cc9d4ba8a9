"""Crash tests with real processes and real SIGKILL: a client dies mid-round; the server dies in the
middle of unmasking and is restarted. Slow (process start-up imports torch), so only these two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import FAST_CLIENT, fast_server, free_port, recorders

from securefed.federation import provision, set_client_server, start_clients
from securefed.privacy.ledger import load_ledger
from securefed.privacy.verify import verify_ledgers
from securefed.protocol.bundle import read_adapter_file
from securefed.server.roundlog import AttemptStatus, RoundLog
from securefed.strategies import StrategySettings, make_strategy

pytestmark = pytest.mark.slow

FAULT = "SECUREFED_FAULT_INJECT"


def _spawn(args: list[str], log: Path, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != FAULT}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fault:
        env[FAULT] = fault
    with open(log, "wb") as f:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "securefed.cli", *args], stdout=f,
                                stderr=subprocess.STDOUT, env=env)


def _fedavg(prev, payloads):
    s = json.loads(prev.settings_json)["strategy"]
    strategy = make_strategy(StrategySettings.model_validate(s), dim=prev.vector.size)
    return strategy.server_apply(prev.vector, np.sum(payloads, axis=0), len(payloads)).global_vec


def _attempts(p):
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    try:
        return log.attempts(), log.privacy_events()
    finally:
        log.close()


def test_client_process_killed_mid_round_survivors_complete(tmp_path, tiny_model):
    from securefed.server.app import ServerApp
    from securefed.server.config import load_server_config

    # A 5-minute masked-input deadline: the dead member must be noticed by its missing heartbeats and
    # polls (4 x 0.5 s), in seconds, not at the deadline.
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model,
                  server=fast_server(masked_input_s=300.0, heartbeat_s=0.5, missed_heartbeats=4), client=FAST_CLIENT)
    app = ServerApp(load_server_config(p.server_toml))
    port = app.start()
    addr = f"127.0.0.1:{port}"
    set_client_server(p.client_tomls["member-3"], addr)
    # member-3 is a real process that SIGKILLs itself after sharing its keys, before its masked input:
    # the server must rebuild its pairwise-mask key from the survivors' shares.
    proc = _spawn(["client", "--config", str(p.client_tomls["member-3"]), "--log-json"], tmp_path / "member-3.log",
                  fault="kill@client:before_masked_input#1")
    watch = recorders(["member-1", "member-2"])
    clients = start_clients(p, addr, names=["member-1", "member-2"], hooks=watch)
    result: dict = {}
    th = threading.Thread(target=lambda: result.setdefault("ok", app.run()), daemon=True)
    try:
        # The join deadline starts with the round loop: let the process (torch, opacus, dp-accounting
        # imports on a loaded machine) register first.
        end = time.monotonic() + 240
        while "member-3" not in app.coordinator.mailbox.clients and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        th.start()
        th.join(180)
        app.coordinator.linger(5.0)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        clients.shutdown()
        app.stop(grace=0.5)
        if proc.poll() is None:
            proc.kill()
    assert result.get("ok") is True
    (rec,), events = _attempts(p)
    assert rec.status is AttemptStatus.COMPLETED
    assert set(rec.survivors) == {"member-1", "member-2"} and rec.dropouts == ("member-3",)
    assert rec.timings["masked_input"] < 60, rec.timings
    prev = read_adapter_file(p.root / "server-state" / "checkpoints" / "global-r000000.safetensors")
    got = read_adapter_file(p.root / "server-state" / "checkpoints" / "global-r000001.safetensors").vector
    payloads = [watch[m].released_payloads[rec.attempt] for m in ("member-1", "member-2")]
    np.testing.assert_allclose(got, _fedavg(prev, payloads), rtol=0, atol=1e-6)
    # The killed client never released an update, so it never wrote (or reported) a DP event.
    assert len(load_ledger(p.root / "clients" / "member-3" / "ledger.sqlite").events) == 0
    assert sorted(e.client_id for e in events) == ["member-1", "member-2"]


def test_server_kill9_mid_unmasking_resumes_without_double_apply(tmp_path, tiny_model, capsys):
    from securefed.cli import main

    port = free_port()
    p = provision(tmp_path, 3, mode="secagg", rounds=2, threshold=2, model_dir=tiny_model,
                  address=f"127.0.0.1:{port}", server=fast_server(), client=FAST_CLIENT)
    port_file = tmp_path / "port"
    srv = _spawn(["server", "--config", str(p.server_toml), "--log-json", "--port-file", str(port_file)],
                 tmp_path / "server-1.log", fault="kill@unmask_received#1")
    clients = None
    srv2 = None
    try:
        end = time.monotonic() + 120
        while not port_file.exists() and srv.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        watch = recorders(p.client_tomls)
        clients = start_clients(p, f"127.0.0.1:{port}", hooks=watch)
        # Killed (SIGKILL) as soon as the first unmasking response of attempt 1 arrives.
        assert srv.wait(180) == -signal.SIGKILL
        mid, _ = _attempts(p)
        assert [a.status for a in mid] == [AttemptStatus.RUNNING] and mid[0].stage == "unmask"
        # `securefed status` shows a dead server as dead, and its attempt's clock stopped with it.
        assert main(["status", "--config", str(p.server_toml)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("server: DEAD") and " stalled " in out and "abandoned when it restarts" in out
        port_file.unlink()
        srv2 = _spawn(["server", "--config", str(p.server_toml), "--log-json", "--port-file", str(port_file)],
                      tmp_path / "server-2.log")
        assert srv2.wait(240) == 0, (tmp_path / "server-2.log").read_text()[-3000:]
        assert clients.join(60)
        # --log-json: stderr is only JSON, gRPC core's own lines included (routed, one record each).
        for log_file in ("server-1.log", "server-2.log"):
            lines = [ln for ln in (tmp_path / log_file).read_text().splitlines() if ln.strip()]
            assert lines and all(json.loads(ln)["level"] for ln in lines), log_file
    finally:
        if clients is not None:
            clients.shutdown()
        for s in (srv, srv2):
            if s is not None and s.poll() is None:
                s.kill()
    attempts, events = _attempts(p)
    # The half-done attempt is abandoned, never completed; the round is re-run as a new session.
    assert [(a.attempt, a.round, a.status) for a in attempts] == [
        (1, 1, AttemptStatus.ABANDONED), (2, 1, AttemptStatus.COMPLETED), (3, 2, AttemptStatus.COMPLETED)]
    assert attempts[0].session_id != attempts[1].session_id
    ck = p.root / "server-state" / "checkpoints"
    g0, g1, g2 = (read_adapter_file(ck / f"global-r00000{r}.safetensors") for r in range(3))
    assert g1.digest == attempts[1].result_hash and g2.digest == attempts[2].result_hash
    pay = {a: [watch[m].released_payloads[a] for m in sorted(clients.daemons)] for a in (1, 2, 3)}
    # Round 1 = FedAvg of attempt 2's updates only: attempt 1's update was not applied, let alone twice.
    np.testing.assert_allclose(g1.vector, _fedavg(g0, pay[2]), rtol=0, atol=1e-6)
    assert not np.allclose(g1.vector, _fedavg(g0, pay[1]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(g2.vector, _fedavg(g1, pay[3]), rtol=0, atol=1e-6)
    # Ledgers: every release (the abandoned one too) is accounted, the chains verify, and the server
    # holds exactly the signed entries the clients wrote (recorded before the crash, kept after it).
    ledgers = sorted((p.root / "clients").glob("*/ledger.sqlite"))
    assert all(r.ok for r in verify_ledgers(ledgers))
    for lf in ledgers:
        led = load_ledger(lf)
        cid = led.header.client_id
        assert [e.round_id for e in led.events] == [1, 2, 3]
        assert [e.entry_hash for e in events if e.client_id == cid] == [e.entry_hash for e in led.entries]
    for d in clients.daemons.values():
        assert read_adapter_file(d.state_dir / "global" / "adapter.safetensors").digest == g2.digest
