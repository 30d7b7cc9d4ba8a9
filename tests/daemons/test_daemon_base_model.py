"""One base model, verified by every member: a member whose checkpoint differs from the federation's
by a single weight value declines the round before it loads or trains anything."""

from __future__ import annotations

import shutil

import pytest
from daemon_helpers import FAST_CLIENT, fast_server, recorders

from securefed.federation import provision, run_in_process
from securefed.server.roundlog import RoundLog
from securefed.training.fingerprint import compute_fingerprint

pytestmark = pytest.mark.slow


def test_a_member_with_a_different_base_declines_before_training(tmp_path, tiny_model):
    twin = tmp_path / "twin-model"
    shutil.copytree(tiny_model, twin)
    assert compute_fingerprint(twin) == compute_fingerprint(tiny_model)  # control: a byte copy agrees
    data = bytearray((twin / "model.safetensors").read_bytes())
    data[-2] ^= 0x01  # one bit of one weight value
    (twin / "model.safetensors").write_bytes(bytes(data))
    theirs, mine = compute_fingerprint(tiny_model), compute_fingerprint(twin)
    assert theirs != mine
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model, server=fast_server(),
                  client=FAST_CLIENT, per_client={"member-3": {"client": {"base_model_dir": str(twin)}}})
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=240)
    assert res.ok
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    try:
        (rec,) = log.attempts()
    finally:
        log.close()
    assert set(rec.survivors) == {"member-1", "member-2"}
    why = rec.declined["member-3"]
    assert theirs[:16] in why and mine[:16] in why
    # Before training: nothing trained, released or even loaded.
    m3 = res.clients["member-3"]
    assert m3.rounds_trained == 0 and not watch["member-3"].released_payloads
    assert m3.trainer._model is None
