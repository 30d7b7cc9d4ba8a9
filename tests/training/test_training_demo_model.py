"""Your own model in the demo, never overwritten: provisioning and the demo read a user's checkpoint
directory and leave it byte-identical; ``securefed demo --model DIR`` completes a round on a GPT-NeoX
and on a T5 checkpoint built from their configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from family_zoo import build_family

from securefed.errors import ConfigError
from securefed.federation import ensure_tiny_model, provision
from securefed.server.app import ServerApp, initial_adapter
from securefed.server.config import load_server_config
from securefed.training.fingerprint import compute_fingerprint
from securefed.training.preset import build_tiny_model


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_provisioning_reads_a_users_model_and_never_writes_it(tmp_path):
    user = build_family("gpt_neox", tmp_path / "my-model")
    before = _snapshot(user)
    p = provision(tmp_path / "fed", 3, model_dir=user)
    assert p.model_dir == user.resolve()
    app = ServerApp(load_server_config(p.server_toml))  # fingerprints the base (cache in its state dir)
    assert app.base_fingerprint == compute_fingerprint(user)
    vec, layout_json, settings, _ = initial_adapter(app.config, app.base_fingerprint)
    assert "query_key_value" in layout_json and app.base_fingerprint in settings
    with pytest.raises(ConfigError, match="not touching it"):
        ensure_tiny_model(user)
    assert _snapshot(user) == before
    # Control: the snapshot does see a write - what provisioning used to do to a directory without the marker.
    victim = shutil.copytree(user, tmp_path / "victim")
    build_tiny_model(victim, pretrain=False)
    assert _snapshot(victim) != before


def _demo(model: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "securefed.cli", "demo", "--model", str(model), "--rounds", "1",
                           "--out", str(out), "--timeout", "400"], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("family, targets", [("gpt_neox", "query_key_value"), ("t5", "q")])
def test_demo_completes_a_round_on_your_checkpoint(family, targets, tmp_path):
    user = build_family(family, tmp_path / f"{family}-ckpt")
    before = _snapshot(user)
    res = _demo(user, tmp_path / "out")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1/1 rounds completed" in res.stdout and "held-out perplexity" in res.stdout
    assert (tmp_path / "out" / "final_adapter_peft" / "adapter_config.json").exists()
    assert _snapshot(user) == before  # the user's checkpoint is byte-identical afterwards
    assert targets in (tmp_path / "out" / "final_adapter_peft" / "adapter_config.json").read_text()


def test_the_server_needs_only_config_json_and_a_pinned_fingerprint(tmp_path):
    user = build_family("phi3", tmp_path / "ckpt")
    fp = compute_fingerprint(user)
    bare = tmp_path / "server-model"
    bare.mkdir()
    shutil.copy(user / "config.json", bare / "config.json")  # no weights on the server
    p = provision(tmp_path / "fed", 3, model_dir=user)
    cfg = load_server_config(p.server_toml)
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"base_model_dir": bare})})
    with pytest.raises(ConfigError, match="holds no weights"):
        ServerApp(cfg)
    pinned = cfg.model_copy(update={"model": cfg.model.model_copy(update={"fingerprint": fp})})
    vec, layout_json, settings, _ = initial_adapter(pinned, fp)
    with_weights = load_server_config(p.server_toml)
    assert (vec.tobytes(), layout_json) == (lambda r: (r[0].tobytes(), r[1]))(initial_adapter(with_weights, fp))
    assert "qkv_proj" in layout_json
    wrong = with_weights.model_copy(update={"model": with_weights.model.model_copy(update={"fingerprint": "0" * 64})})
    with pytest.raises(ConfigError, match="does not match the weights"):
        ServerApp(wrong)
