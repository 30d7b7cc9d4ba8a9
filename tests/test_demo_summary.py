"""What ``securefed demo`` tells its user: a model named by its package, settings checked in one line,
each member's time per step and peak memory, and a summary that never names a file it did not write."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest

from securefed import demo_cli
from securefed.demo_watch import MemberWatch, peak_rss_kib
from securefed.errors import ConfigError
from securefed.federation import provision
from securefed.models.sources import SMOLLM2
from securefed.server.config import load_server_config
from securefed.server.roundlog import RoundLog


def _args(**kw) -> argparse.Namespace:
    base = dict(steps=None, batch_size=16, seq_len=None, learning_rate=0.2, training_deadline=None, training_max=1800.0,
                timeout=None, task="pydoc")
    base.update(kw)
    return argparse.Namespace(**base)


def test_a_packaged_model_is_named_by_its_short_name_unless_a_directory_is(tmp_path, monkeypatch):
    assert demo_cli._packaged("smollm2") is SMOLLM2 and demo_cli._packaged(None) is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()
    assert demo_cli._packaged("smollm2") is None  # the user's directory of that name wins
    assert demo_cli._packaged("no-such-model") is None


def test_settings_follow_the_model_and_bad_values_are_one_line():
    assert demo_cli._settings(_args(), real=False) == (24, 120.0, 600.0, 32)
    assert demo_cli._settings(_args(), real=True) == (8, 300.0, 2400.0, 32)
    assert demo_cli._settings(_args(task="icd10"), real=True) == (8, 300.0, 3600.0, 96)
    assert demo_cli._settings(_args(steps=3, training_deadline=50.0), real=True)[:2] == (3, 50.0)
    for bad, flag in ((dict(steps=0), "--steps"), (dict(seq_len=2), "--seq-len"),
                      (dict(training_deadline=-1.0), "--training-deadline")):
        with pytest.raises(ConfigError, match=flag) as e:
            demo_cli._settings(_args(**bad), real=False)
        assert "\n" not in str(e.value)


def test_members_time_per_step_and_peak_memory_come_from_their_logs_and_proc(tmp_path):
    (tmp_path / "member-1.log").write_text("\n".join(json.dumps(e) for e in [
        {"event": "training", "attempt": 1, "done": 4, "total": 8, "loss": 3.5},
        {"event": "local training done", "attempt": 1, "steps": 8, "seconds": 16.0},
        {"event": "local training done", "attempt": 2, "steps": 8, "seconds": 24.0},
    ]) + "\n" + '{"event": "training", "attempt": 3, "do')  # a line still being written
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        watch = MemberWatch(tmp_path)
        lines = watch.poll({"member-1": proc})
        assert lines == ["member-1: training attempt 1: step 4/8, loss 3.500"]
        assert watch.step_s == {"member-1": [2.0, 3.0]}
        assert watch.peak_kib["member-1"] == peak_rss_kib(proc.pid) > 1000
        assert watch.poll({"member-1": proc}) == []  # each event once
        (summary,) = watch.summary()
        assert "DP-SGD 2.50 s per step (mean of 2 round(s))" in summary and "peak RSS" in summary
    finally:
        proc.kill()
        proc.wait()


def test_a_demo_without_a_completed_round_names_no_adapter(tmp_path, tiny_model, capsys):
    """The issue's run printed a ``final adapter:`` path that was never written, and an "after" perplexity
    equal to "before"; with no completed round, neither appears."""
    out = tmp_path / "demo"
    p = provision(out / "work", 3, model_dir=tiny_model)
    cfg = load_server_config(p.server_toml)
    log = RoundLog(cfg.server.state_dir / "rounds.sqlite")
    attempt = log.begin_attempt(round=1, mode="secagg", base_hash="00" * 32, stage="plan")
    log.abort_attempt(attempt, reason="only 0 clients accepted the plan (deadlines.training_s)")
    log.close()
    (out / "ledgers").mkdir()
    rc = demo_cli._summarise(out, p, out / "ledgers", 1, {}, time.monotonic(), MemberWatch(out / "logs"))
    text = capsys.readouterr().out
    assert rc == 1 and not (out / "final_adapter.safetensors").exists()
    assert "final adapter:   none written (no round completed)" in text
    assert "-> after" not in text and "deadlines.training_s" in text and "FEDERATION FAILED" in text
