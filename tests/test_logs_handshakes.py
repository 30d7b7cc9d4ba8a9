"""Text logs of a daemon start with the date, gRPC core's own lines included (routed through our
handler, issue 19); a TLS handshake refused by the server (a member of another CA) becomes a
securefed security alert, throttled, instead of only gRPC's line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from securefed.transport import identity as tid

_PROGRAM = """
import sys, time, grpc
from pathlib import Path
from securefed.logs import setup_logging, route_native_stderr, watch_native
from securefed.server.handshakes import HandshakeWatch
setup_logging(json_lines=False)
if sys.argv[1] == "route":
    route_native_stderr(keep_python_stderr=True)
    watch_native(HandshakeWatch(Path(sys.argv[2]) / "state"))
from securefed.transport.tls import make_server, make_channel
srv = make_server("127.0.0.1:0", sys.argv[2] + "/ours", max_workers=4)
srv.server.start()
ch = make_channel(f"127.0.0.1:{srv.port}", sys.argv[2] + "/theirs", "m")
try:
    grpc.channel_ready_future(ch).result(timeout=2)
except grpc.FutureTimeoutError:
    pass
ch.close()
time.sleep(0.3)
"""

DATED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


def _run(tmp_path, mode: str) -> list[str]:
    for d in ("ours", "theirs"):
        tid.init_ca(tmp_path / d)
        tid.issue_server(tmp_path / d, ["127.0.0.1"])
    tid.issue_client(tmp_path / "theirs", "m")  # a member with a bundle of another CA
    r = subprocess.run([sys.executable, "-c", _PROGRAM, mode, str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "GRPC_VERBOSITY": "info"}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def test_grpc_lines_carry_the_date_and_a_refused_handshake_is_a_security_alert(tmp_path):
    lines = _run(tmp_path, "route")
    assert lines and all(DATED.match(ln) for ln in lines), [ln for ln in lines if not DATED.match(ln)]
    assert any("securefed.native: Handshake failed" in ln for ln in lines)
    assert any("SECURITY: authentication failed" in ln and "TLS handshake refused" in ln for ln in lines)
    alerts = [json.loads(x) for x in (tmp_path / "state" / "security-alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == 1 and "another CA's bundle" in alerts[0]["detail"]  # throttled: one for the burst


def test_without_routing_grpc_lines_have_no_date_and_nothing_is_said(tmp_path):
    # The control: the same handshakes with stderr left alone.
    lines = _run(tmp_path, "plain")
    assert any("Handshake failed" in ln and not DATED.match(ln) for ln in lines)
    assert not (tmp_path / "state" / "security-alerts.jsonl").exists()
