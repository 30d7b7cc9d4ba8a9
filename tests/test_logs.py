"""Logs: plain-text lines carry the date; with --log-json, stderr is only JSON, gRPC core's own lines
(written by C++ straight to file descriptor 2) included."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys

from securefed.logs import TextFormatter, get_logger, log

_PROGRAM = """
import os, sys
from securefed.logs import setup_logging, route_native_stderr, get_logger, log
setup_logging(json_lines=True)
if sys.argv[1] == "route":
    route_native_stderr()
log(get_logger("client"), "hello", attempt=3)
os.write(2, b"I1201 12:00:00.000000     123 ssl_transport_security.cc:1234] Handshake failed\\n")
import grpc
ch = grpc.insecure_channel("127.0.0.1:1")
try:
    grpc.channel_ready_future(ch).result(timeout=0.5)
except grpc.FutureTimeoutError:
    pass
ch.close()
raise RuntimeError("a traceback at exit")
"""


def _run(mode: str) -> list[str]:
    # gRPC at its most talkative: its core logs (absl) go to fd 2 whatever Python does with sys.stderr.
    env = {**os.environ, "GRPC_VERBOSITY": "debug", "GRPC_TRACE": "handshaker"}
    r = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def test_log_json_stderr_is_only_json_with_grpc_core_lines_routed():
    lines = _run("route")
    records = [json.loads(ln) for ln in lines]  # every line parses
    native = [r for r in records if r["logger"] == "securefed.native"]
    assert any(r["event"] == "hello" and r["attempt"] == 3 for r in records)
    assert any(r["event"] == "Handshake failed" and r["source"] == "ssl_transport_security.cc:1234"
               and r["level"] == "info" for r in native)
    assert any(r.get("source", "").startswith(("handshaker.cc", "log.cc", "trace.cc")) for r in native)  # gRPC's own
    assert any("a traceback at exit" in r["event"] for r in native)  # drained at exit, as JSON too


def test_without_routing_grpc_core_lines_break_the_json_stream():
    # The control: the same program without route_native_stderr writes plain lines among the JSON.
    lines = _run("plain")
    plain = [ln for ln in lines if not ln.startswith("{")]
    assert any("ssl_transport_security.cc" in ln for ln in plain) and any("Traceback" in ln for ln in plain)


def test_plain_text_lines_start_with_the_date_and_time():
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(TextFormatter())
    lg = get_logger("test.text")
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        log(lg, "round completed", attempt=2, round=1)
    finally:
        lg.removeHandler(h)
    line = buf.getvalue().strip()
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} INFO    securefed.test.text: round completed "
                    r"attempt=2 round=1$", line), line
