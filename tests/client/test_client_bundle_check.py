"""The by-hand path of a member (issue 19): ``securefed keys bundle`` writes a ``client.toml`` that
uses ``ledger_dir``; ``securefed client --check`` must validate exactly that file, find the data's
ledger in that directory, and say in one line what to change (a changed budget, a batch larger than
the data, data too small for DP to mean much). Real PKI, the real bundle, the tiny preset model."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from securefed.cli import main
from securefed.client.config import load_client_config
from securefed.federation import write_toml
from securefed.transport import identity as tid
from securefed.transport.member_kit import build_bundle


@pytest.fixture(scope="module")
def member(tmp_path_factory, tiny_model) -> Path:
    """A member set up as clients/README.md says: the bundle extracted, its model and data in place."""
    root = tmp_path_factory.mktemp("bundle")
    pki = root / "pki"
    tid.init_ca(pki)
    tid.issue_server(pki, hosts=["127.0.0.1"])
    tid.issue_client(pki, "site-a")
    state_root = root / "var"
    tar = build_bundle(pki, "site-a", root / "member-site-a.tar", server="127.0.0.1:50551", state_root=str(state_root))
    with tarfile.open(tar) as t:
        t.extractall(root, filter="data")
    (state_root / "models").mkdir(parents=True)
    (state_root / "models" / "base").symlink_to(tiny_model)
    (state_root / "data").mkdir()
    (state_root / "data" / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"record {i}: the quick brown fox jumps over the lazy dog"}) + "\n"
                for i in range(300)))
    return root / "member-site-a" / "client.toml"


def _variant(toml: Path, out: Path, **sections) -> Path:
    data = tomllib.loads(toml.read_text())
    for sec, body in sections.items():
        data.setdefault(sec, {}).update(body)
    out.mkdir(parents=True, exist_ok=True)
    # keep the bundle's relative credentials_dir meaningful from the new place
    data["client"]["credentials_dir"] = str(toml.parent / "pki")
    return write_toml(out / "client.toml", data)


def test_check_validates_the_config_a_keys_bundle_writes(member, capsys):
    assert "ledger_dir" in member.read_text() and "ledger_path" not in member.read_text()
    assert main(["client", "--config", str(member), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ok    ledger:" in out and "no ledger of this data yet" in out
    assert "client: ready" in out
    assert not (load_client_config(member).client.ledger_dir / "dataset.salt").exists()  # --check writes nothing


def test_check_finds_the_datas_ledger_in_ledger_dir_and_refuses_a_changed_budget(member, tmp_path, capsys):
    from securefed.client.daemon import ClientDaemon

    cfg = load_client_config(member)
    d = ClientDaemon(cfg)  # opens (creates) the data's ledger in ledger_dir, as the daemon does
    d.close()
    assert main(["client", "--config", str(member), "--check"]) == 0
    out = capsys.readouterr().out
    assert "ok    ledger:" in out and "dataset-" in out and "0 entries, chain verified" in out

    raised = _variant(member, tmp_path, privacy={"target_epsilon": 16.0})
    assert main(["client", "--config", str(raised), "--check"]) == 2
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("FAIL  ledger:"))
    assert "created with the budget target_epsilon = 8" in line and "the config says target_epsilon = 16" in line
    assert "Set [privacy] back to the ledger's budget" in line
    # The daemon itself: one line, exit 2 (systemd does not restart it every 10 s for ever).
    assert main(["client", "--config", str(raised)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Set [privacy] back to the ledger's budget" in err[0]


def test_a_batch_larger_than_the_data_names_the_training_section(member, tmp_path, capsys):
    small = _variant(member, tmp_path, data={"path": str(tmp_path / "three.jsonl")},
                     client={"ledger_dir": str(tmp_path / "ledgers")})
    (tmp_path / "three.jsonl").write_text("".join(json.dumps({"text": f"patient {i} note"}) + "\n" for i in range(3)))
    assert main(["client", "--config", str(small), "--check"]) == 2
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("FAIL  privacy budget:"))
    assert "[training] batch_size = 8 exceeds the 3 training examples" in line
    assert "in the [training] section" in line


def test_check_warns_that_dp_on_three_records_protects_little(member, tmp_path, capsys):
    # Negative control first: 300 records at the default batch size draw no warning.
    assert main(["client", "--config", str(member), "--check"]) == 0
    assert "data size" not in capsys.readouterr().out
    small = _variant(member, tmp_path, data={"path": str(tmp_path / "three.jsonl")}, training={"batch_size": 2},
                     privacy={"delta": 0.01}, client={"ledger_dir": str(tmp_path / "ledgers")})
    (tmp_path / "three.jsonl").write_text("".join(json.dumps({"text": f"patient {i} note"}) + "\n" for i in range(3)))
    main(["client", "--config", str(small), "--check"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("warn  data size:"))
    assert "only 3 training examples" in line and "protects little" in line


def test_the_bundles_comment_says_where_its_paths_are():
    from securefed.transport.member_kit import client_toml

    trial, service = client_toml("a", "h:1", state_root="."), client_toml("a", "h:1")
    assert 'state_dir = "state"' in trial and "are absolute" not in trial and "under '.'" in trial
    assert 'state_dir = "/var/lib/securefed/state"' in service and "are absolute" in service
