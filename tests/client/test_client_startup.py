"""Fail fast: a member configuration that can never train exits 2 at start-up with one line (before
dialling anything), and ``securefed client --check`` validates everything offline (exit 0 or 2).
Real configs, real PKI, the tiny preset model and the demo data; no server anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from securefed.cli import main
from securefed.client.config import load_client_config
from securefed.errors import ConfigError
from securefed.federation import provision, set_client_server, write_toml


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("kit")
    p = provision(root, 3, model_dir=tiny_model, client={"training": {"steps": 2, "batch_size": 8, "max_seq_len": 32}})
    toml = p.client_tomls["member-1"]
    set_client_server(toml, "127.0.0.1:50051")  # nothing listens there: nothing is dialled
    return toml


def _variant(kit: Path, tmp_path: Path, **sections) -> Path:
    data = tomllib.loads(kit.read_text())
    data["client"]["state_dir"] = str(tmp_path / "state")
    data["client"]["ledger_path"] = str(tmp_path / "state" / "ledger.sqlite")  # each variant its own budget
    for sec, body in sections.items():
        data.setdefault(sec, {}).update(body)
        for k in [k for k, v in body.items() if v is None]:
            del data[sec][k]
    return write_toml(tmp_path / "client.toml", data)


def _daemon_start(path: Path) -> str:
    """What ``securefed client`` does before it dials: the daemon's start-up checks."""
    from securefed.client.daemon import ClientDaemon

    d = ClientDaemon(load_client_config(path))
    try:
        d.prepare()
    finally:
        d.close()
    return "started"


NEVER = {
    # delta must be below 1/N (N: about a hundred demo blocks here)
    "delta": ({"privacy": {"delta": 0.5}}, r"privacy.delta = 0.5 is not below 1/dataset_size"),
    # no noise level reaches epsilon 0.01 over 3 rounds
    "target": ({"privacy": {"target_epsilon": 0.01}}, r"can never train: target epsilon 0.01 is unreachable"),
    # a fixed noise multiplier whose first round alone passes the per-round cap
    "fixed noise over the cap": ({"privacy": {"per_round_epsilon": 0.5}, "training": {"noise_multiplier": 0.5}},
                                 r"can never train: one round at training.noise_multiplier = 0.5 .* > privacy.per_round_epsilon"),
    "fixed noise over the target": ({"privacy": {"target_epsilon": 0.2}, "training": {"noise_multiplier": 0.6}},
                                    r"can never train: .* > privacy.target_epsilon = 0.2"),
}


@pytest.mark.parametrize("case", sorted(NEVER))
def test_a_member_that_can_never_train_stops_at_start_up_with_one_line(kit, tmp_path, case):
    sections, why = NEVER[case]
    path = _variant(kit, tmp_path, **sections)
    with pytest.raises(ConfigError, match=why) as exc:  # exit code 2, printed as one line by the CLI
        _daemon_start(path)
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_a_member_whose_calibration_must_honour_the_cap_starts(kit, tmp_path):
    # The control for the cap: with calibrated noise the same cap is honoured (the noise rises to meet it).
    path = _variant(kit, tmp_path, privacy={"per_round_epsilon": 0.5})
    assert _daemon_start(path) == "started"
    assert _daemon_start(_variant(kit, tmp_path / "plain")) == "started"


def test_an_address_without_a_port_is_refused_as_one_line_exit_2(kit, tmp_path):
    path = _variant(kit, tmp_path, client={"server": "127.0.0.1"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "securefed.cli", "client", "--config", str(path)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "client.server" in lines[0] and "has no port" in lines[0] and "443" in lines[0]


def test_check_says_ready_for_a_member_that_can_train(kit, tmp_path, capsys):
    assert main(["client", "--config", str(_variant(kit, tmp_path)), "--check"]) == 0
    out = capsys.readouterr().out
    for name in ("config", "credentials", "member certificate", "federation CA certificate", "state_dir", "ledger",
                 "model and data", "privacy budget"):
        assert f"ok    {name}:" in out, name
    assert "noise multiplier" in out and "client: ready" in out


def test_check_fails_naming_every_problem(kit, tmp_path, capsys):
    path = _variant(kit, tmp_path, privacy={"delta": 0.5}, client={"credentials_dir": str(tmp_path / "nothing-here"),
                                                                  "server": "127.0.0.1:0"})
    assert main(["client", "--config", str(path), "--check"]) == 2
    out = capsys.readouterr().out
    assert "FAIL  server: client.server '127.0.0.1:0': port 0" in out
    assert "FAIL  credentials:" in out and "ca.pem" in out
    assert "FAIL  privacy budget: privacy.delta = 0.5 is not below 1/dataset_size" in out
    assert "ok    model and data:" in out  # what could be checked still was
    assert out.strip().endswith("client: 3 check(s) failed; fix them before starting")


def test_check_of_a_config_that_does_not_load_is_one_fail_line(tmp_path, capsys):
    bad = tmp_path / "client.toml"
    bad.write_text('[client]\nname = "m"\nserver = "host"\n')
    assert main(["client", "--config", str(bad), "--check"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config:") and "client.server" in out


def test_check_counts_truncated_records_or_names_the_line_it_refuses(kit, tmp_path, capsys):
    import json

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {i}", "response": "ok" if i % 4 else "a long answer " * 6})
                            + "\n" for i in range(200)))
    source = {"path": str(data), "demo_client": None, "demo_clients": None}
    assert main(["client", "--config", str(_variant(kit, tmp_path, data=source, training={"max_seq_len": 64})),
                 "--check"]) == 0
    out = capsys.readouterr().out
    assert "warn  records: 200 training examples from 200 records; 50 truncated to max_seq_len" in out
    assert "raise training.max_seq_len to" in out
    refuse = _variant(kit, tmp_path, data={**source, "long_records": "refuse"}, training={"max_seq_len": 64})
    assert main(["client", "--config", str(refuse), "--check"]) == 2
    assert f"FAIL  model and data: {data}:1: the record is" in capsys.readouterr().out
