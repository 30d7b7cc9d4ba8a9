"""The audit report shows what the privacy bought: `securefed eval --json` results given with --metrics."""

from __future__ import annotations

import json

from securefed.cli import main
from securefed.crypto.keys import IdentityKeyPair
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.events import DpEvent, LibraryVersions
from securefed.privacy.ledger import Ledger


def _ledger(path):
    with Ledger.create(path, IdentityKeyPair.generate(), client_id="member-1",
                       budget=PrivacyBudget(target_epsilon=8.0, delta=1e-5)) as led:
        led.append(DpEvent(client_id="member-1", round_id=0, noise_multiplier=1.5, sample_rate=0.04, steps=20,
                           delta=1e-5, clip_norm=1.0, accountant="rdp", secure_rng=True,
                           library_versions=LibraryVersions(opacus="1.6.0", torch="2.13.0", securefed="0.1.0"),
                           config_hash="ab" * 32, timestamp="2026-11-28T05:00:00.000000Z"))
    return path


def _eval(path, adapter, metric, ppl):
    path.write_text(json.dumps({"model": "base", "adapter": adapter, "adapter_kind": "securefed-bundle",
                                "data": "heldout.jsonl", "records": 300, "loss": 1.0, "perplexity": ppl,
                                "metric": "exact_match", "task_metric": metric, "metrics": {"exact_match": metric}}))
    return path


def test_report_shows_the_task_metric_before_and_after(tmp_path, capsys):
    led = _ledger(tmp_path / "m1.sqlite")
    before = _eval(tmp_path / "before.json", "global-r000000.safetensors", 0.05, 40.0)
    after = _eval(tmp_path / "after.json", "final_adapter.safetensors", 0.25, 12.5)
    out = tmp_path / "audit"
    assert main(["audit", "report", str(led), "--out", str(out), "--metrics", str(before), "--metrics", str(after)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [e["task_metric"] for e in data["evaluation"]] == [0.05, 0.25]
    assert abs(data["evaluation"][1]["task_metric_change"] - 0.20) < 1e-12
    assert data["evaluation"][1]["perplexity_change"] == -27.5
    html = (out / "report.html").read_text()
    assert "Task evaluation" in html and "final_adapter.safetensors" in html and "+0.2000" in html
    assert "one whole conversation" in data["explanations"]["unit_of_privacy"]
    # Without --metrics the section is absent; a file that is not an eval result is one line, exit 2.
    assert main(["audit", "report", str(led), "--out", str(tmp_path / "plain")]) == 0
    assert "Task evaluation" not in (tmp_path / "plain" / "report.html").read_text()
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("{}")
    assert main(["audit", "report", str(led), "--out", str(out), "--metrics", str(tmp_path / "bad.json")]) == 2
    assert "not a `securefed eval --json` result" in capsys.readouterr().err
