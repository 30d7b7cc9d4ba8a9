"""Issue 11 §8 end to end: the real member daemons (DP-SGD training, the secagg and ckks sessions) and the
real server, with one member behind a TCP relay that cuts its connection in the middle of every large
transfer, both directions. The round completes with that member in the sum, and the bytes it moved
stay under twice what it had to move. Slow (training), so two small cases."""

from __future__ import annotations

import threading
import time

import pytest
from tcp_relay import DOWN, UP, CuttingRelay

from securefed.federation import provision, start_clients
from securefed.server.app import ServerApp
from securefed.server.config import load_server_config
from securefed.server.roundlog import AttemptStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

# LoRA rank 256 on every projection of the tiny preset: 524,289 payload values, so a masked upload is
# 2 MiB (the 32-bit ring the server picks for three clipped updates), the adapter 2 MiB, a CKKS upload
# about 3.6 MB (7 B a value), its decryption request about the same.
LORA = {"rank": 256, "alpha": 16.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
SERVER = {"lora": LORA, "deadlines": {"join_s": 90.0, "training_s": 120.0, "share_keys_s": 30.0,
                                      "masked_input_s": 60.0, "unmask_s": 30.0, "decrypt_s": 60.0, "poll_s": 1.0}}
CLIENT = {"client": {"planned_rounds": 2},
          "training": {"steps": 2, "batch_size": 8, "max_seq_len": 32, "learning_rate": 0.5, "clipping": "hooks"},
          "connection": {"poll_wait_s": 1.0, "backoff_initial_s": 0.1, "backoff_max_s": 1.0, "give_up_after_s": 120.0}}
BURST = 600 * 1024  # three cuts fit in the smallest large transfer (2 MiB); polls and stage messages are a few kB
CUTS = 3  # per direction


def _run_with_relay(p, timeout_s: float = 300.0):
    app = ServerApp(load_server_config(p.server_toml))
    port = app.start()
    result: dict = {}
    with CuttingRelay(port) as relay:
        relay.cut(UP, BURST, CUTS)
        relay.cut(DOWN, BURST, CUTS)
        cut = start_clients(p, relay.address, names=["member-1"])
        rest = start_clients(p, f"127.0.0.1:{port}", names=["member-2", "member-3"])
        try:
            loop = threading.Thread(target=lambda: result.setdefault("ok", app.run()), daemon=True)
            loop.start()
            loop.join(timeout_s)
            app.coordinator.linger(10.0)
            end = time.monotonic() + 30
            for ct in (cut, rest):
                ct.join(max(1.0, end - time.monotonic()))
        finally:
            cut.shutdown()
            rest.shutdown()
            recs = app.coordinator.roundlog.attempts()
            app.stop(grace=0.5)
    return result.get("ok", False), recs, relay, cut.daemons["member-1"], cut.exits.get("member-1")


def _check(ok, recs, relay, member, exit_code):
    assert ok and [r.status for r in recs] == [AttemptStatus.COMPLETED], [r.reason for r in recs]
    assert "member-1" in recs[0].survivors and exit_code == 0
    counts = member.connection.counts
    up, down = relay.plans
    assert up.done == down.done == CUTS and counts.resumes >= 2 * CUTS
    assert counts.uploaded >= 2 * 1024 * 1024 and counts.downloaded >= 2 * 1024 * 1024
    # Everything on member-1's link (TLS, HTTP/2, polls, every stage) under twice its payload bytes.
    assert relay.bytes[UP] < 2 * counts.uploaded, (relay.bytes, counts)
    assert relay.bytes[DOWN] < 2 * counts.downloaded, (relay.bytes, counts)


def test_a_secagg_round_completes_through_dropped_connections(tmp_path, tiny_model):
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=3, model_dir=tiny_model, server=SERVER,
                  client=CLIENT)
    _check(*_run_with_relay(p))


def test_a_ckks_round_completes_through_dropped_connections(tmp_path, tiny_model):
    p = provision(tmp_path, 3, mode="ckks", rounds=1, threshold=3, model_dir=tiny_model, server=SERVER,
                  client=CLIENT)
    _check(*_run_with_relay(p))
