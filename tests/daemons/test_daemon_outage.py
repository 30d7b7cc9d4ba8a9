"""Day-two faults with real processes (issue 19): a server stopped with SIGTERM (``systemctl stop`` for
an upgrade) and a server whose state disk is full are outages members wait out, staying up and
rejoining; a member whose ledger disk is full releases nothing and goes on; only the server's signed
end of the federation stops the members. One federation, three server processes in a row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import FAST_CLIENT, fast_server, free_port, recorders

from securefed.federation import provision, set_client_server, start_clients
from securefed.privacy.ledger import load_ledger
from securefed.server.app import ServerApp
from securefed.server.config import load_server_config
from securefed.server.roundlog import AttemptStatus, RoundLog

pytestmark = pytest.mark.slow


class _Proc:
    """A ``securefed`` process; its stderr (JSON lines) read through a pipe, not a file, so that a file
    size limit set inside it cannot cut its own log."""

    def __init__(self, args: list[str], fault: str | None = None, port_file: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SECUREFED_FAULT_INJECT"}
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **({"SECUREFED_FAULT_INJECT": fault} if fault else {}))
        if port_file is not None:
            port_file.unlink(missing_ok=True)
            args = [*args, "--port-file", str(port_file)]
        self.proc = subprocess.Popen([sys.executable, "-m", "securefed.cli", *args, "--log-json"], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()
        end = time.monotonic() + 180
        while port_file is not None and not port_file.exists() and self.proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def records(self) -> list[dict]:
        return [json.loads(x) for x in self.lines if x.strip()]


def _completed(p) -> int:
    try:
        log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    except Exception:  # noqa: BLE001 - not there yet
        return 0
    try:
        return log.completed_rounds()
    finally:
        log.close()


def test_members_wait_out_a_stopped_server_and_a_full_disk_and_stop_only_on_the_signed_end(tmp_path, tiny_model):
    port = free_port()
    client = {**FAST_CLIENT, "client": {**FAST_CLIENT["client"], "planned_rounds": 8}}
    p = provision(tmp_path, 3, mode="secagg", rounds=2, threshold=2, model_dir=tiny_model, address=f"127.0.0.1:{port}",
                  server=fast_server(heartbeat_s=0.5, missed_heartbeats=4), client=client)
    set_client_server(p.client_tomls["member-3"], f"127.0.0.1:{port}")
    # The round-0 adapter built here, where torch is loaded already: the server processes never import it.
    co = ServerApp(load_server_config(p.server_toml)).coordinator
    co.recover()
    co.roundlog.close()
    port_file = tmp_path / "port"
    server = ["server", "--config", str(p.server_toml)]
    servers = [_Proc(server, port_file=port_file)]
    # member-3 is a process whose disk fills up once it accepted attempt 1: its ledger cannot grow.
    m3 = _Proc(["client", "--config", str(p.client_tomls["member-3"])], fault="fsize:4096@client:after_accept#1")
    clients = start_clients(p, f"127.0.0.1:{port}", names=["member-1", "member-2"])
    try:
        end = time.monotonic() + 240
        while _completed(p) < 1 and servers[0].proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        assert _completed(p) == 1 and m3.proc.poll() is None  # round 1 went on without it; it is still up

        # systemctl stop: a deliberate stop (exit 0) that is not the end of the federation for anyone.
        servers[0].proc.send_signal(signal.SIGTERM)
        assert servers[0].wait(60) == 0
        ended = [r for r in servers[0].records() if r["event"].startswith("federation ended")]
        assert ended and ended[-1]["event"] == "federation ended (stopped)" and ended[-1]["members_told"] is False
        time.sleep(3.0)
        assert all(th.is_alive() for th in clients.threads.values()) and not clients.exits and m3.proc.poll() is None

        # The state disk fills up while the next round is applied: one line, exit 1, no end sent.
        servers.append(_Proc(server, fault="fsize:1024@before_apply", port_file=port_file))
        assert servers[1].wait(240) == 1
        errors = [r for r in servers[1].records() if r["level"] == "error" and r["logger"] == "securefed.cli"]
        assert len(errors) == 1, servers[1].lines[-20:]
        assert errors[0]["event"].endswith(
            "global-r000002.safetensors: file size limit reached (File too large): the server stops without ending the "
            "federation (members wait for it): free space there; started again, it resumes from the last completed round")
        assert not any(r.get("members_told") for r in servers[1].records())
        time.sleep(2.0)
        assert all(th.is_alive() for th in clients.threads.values()) and not clients.exits and m3.proc.poll() is None

        # Room again: the server resumes round 2, completes, and signs the end; now the members stop.
        servers.append(_Proc(server, port_file=port_file))
        assert servers[2].wait(240) == 0, servers[2].lines[-20:]
        assert clients.join(90), "members did not stop on the signed end of the federation"
        assert m3.wait(90) == 0, "\n".join(json.loads(x)["event"] for x in m3.lines[-40:])
    finally:
        clients.shutdown()
        for s in (*servers, m3):
            if s.proc.poll() is None:
                s.proc.kill()
    assert clients.exits == {"member-1": 0, "member-2": 0}
    attempts = _attempts(p)
    assert [a.round for a in attempts if a.status is AttemptStatus.COMPLETED] == [1, 2]
    assert any(a.status is AttemptStatus.ABANDONED for a in attempts)  # the attempt the full disk cut off
    # member-3: one line for its full ledger, nothing released, and it declined (said why) instead of going silent.
    rec = m3.records()
    full = [r for r in rec if r["level"] == "error" and r["event"] == "cannot write locally: left the attempt"]
    assert full and ": nothing was released (the ledger entry comes first)" in full[0]["error"]
    assert "write failed (a full disk, a file size limit or a failing disk)" in full[0]["error"]
    assert len(load_ledger(p.root / "clients" / "member-3" / "ledger.sqlite").entries) == 0
    assert any("cannot write locally" in why for a in attempts for c, why in a.declined.items() if c == "member-3")
    assert [r["event"] for r in rec if r["event"].startswith("federation finished")] == ["federation finished"]


def _attempts(p):
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    try:
        return log.attempts()
    finally:
        log.close()
