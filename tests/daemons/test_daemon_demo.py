"""`securefed demo` as a user runs it: separate processes, mutual TLS, DP-SGD + secure aggregation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_and_its_ledgers_verify(tmp_path):
    out = tmp_path / "demo-output"
    proc = subprocess.run([sys.executable, "-m", "securefed.cli", "demo", "--out", str(out), "--rounds", "2"],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "2/2 rounds completed, 0 failed" in text and "held-out perplexity: before" in text
    for m in ("member-1", "member-2", "member-3"):
        assert f"{m}: epsilon spent" in text
    assert (out / "final_adapter.safetensors").is_file()
    assert f"final adapter:   {out / 'final_adapter.safetensors'}" in text
    assert text.count("s per step (mean of 2 round(s)), peak RSS") == 3  # each member's step time and memory
    assert (out / "final_adapter_peft" / "adapter_model.safetensors").is_file()
    assert (out / "audit" / "report.html").is_file()
    report = json.loads((out / "audit" / "report.json").read_text())
    assert report  # written by the privacy package's report API
    ledgers = sorted(str(p) for p in (out / "ledgers").glob("*.sqlite"))
    assert len(ledgers) == 3
    # The auditor's anchors come from the server: ledger heads and certified identity keys.
    st = subprocess.run([sys.executable, "-m", "securefed.cli", "status", "--config", str(out / "work" / "server.toml")],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stderr
    anchors = [tok for line in st.stdout.splitlines() if line.startswith("  --") for tok in line.split()]
    assert anchors.count("--expect-head") == 3 and anchors.count("--public-key") == 3
    v = subprocess.run([sys.executable, "-m", "securefed.cli", "audit", "verify", *ledgers, *anchors],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "not pinned" not in v.stdout and "all 3 ledger(s) verified" in v.stdout
    # --log-json: every line the server and the clients wrote is one JSON object.
    events = [json.loads(line) for line in (out / "logs" / "server.log").read_text().splitlines()]
    assert sum(e["event"] == "round completed" for e in events) == 2
    for m in ("member-1", "member-2", "member-3"):
        client_events = [json.loads(line) for line in (out / "logs" / f"{m}.log").read_text().splitlines()]
        assert [e["event"] for e in client_events].count("privacy event recorded") == 2
