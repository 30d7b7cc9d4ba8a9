"""The coordinator's round state machine driven directly (no gRPC, no model)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from securefed.config import parse_model
from securefed.errors import ReplayedMessage, StaleMessage
from securefed.protocol.plan import verify_plan
from securefed.server.config import ServerConfig
from securefed.server.roundlog import AttemptStatus
from securefed.transport._generated import federation_pb2 as pb

KIT = Path(__file__).resolve().parents[2] / "clients"


def _coordinator(tmp_path: Path, *, training_s: float = 5.0, threshold: int = 2):
    from securefed.server.app import ServerApp

    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"rounds": 1, "cohort_size": 3, "min_clients": 3, "threshold": threshold, "mode": "plaintext",
                       "allow_plaintext_for_debugging": True},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "deadlines": {"training_s": training_s, "join_s": 10.0, "poll_s": 0.5},
        "model": {"fingerprint": "ab" * 32},  # no weights on this server: the operator pins the base
    })
    app = ServerApp(cfg)
    co = app.coordinator
    layout = '{"tensors":[],"version":1}'
    co._initial_adapter = lambda: (np.zeros(6, np.float32), layout, co.settings_json, None)
    return co


def _plaintext_upload(plan: pb.RoundPlan, payload: np.ndarray) -> bytes:
    from securefed.crypto.fixedpoint import FixedPointParams, encode

    fp = FixedPointParams(clip=plan.secagg.clip, frac_bits=plan.secagg.frac_bits, ring_bits=plan.secagg.ring_bits)
    enc, _ = encode(payload, fp)
    return enc.astype("<u4" if fp.ring_bits == 32 else "<u8").tobytes()


def _hdr(name: str, plan: pb.RoundPlan, seq: int, stage=pb.STAGE_PLAN) -> pb.RequestHeader:
    return pb.RequestHeader(client_id=name, session_id=plan.plan_sha256, round=plan.round, stage=stage, sequence=seq)


def test_coordinator_round_with_a_silent_client_and_replay_rejection(tmp_path):
    co = _coordinator(tmp_path, training_s=1.5)
    co.recover()
    names = ["a", "b", "c"]
    for i, n in enumerate(names):
        co.mailbox.register(n, bytes([i + 1]) * 32)
    done = {}
    th = threading.Thread(target=lambda: done.setdefault("ok", co.run()))
    th.start()
    try:
        plans = {n: co.mailbox.poll(n, 3.0) for n in names}
        assert all(t.WhichOneof("body") == "plan" for t in plans.values())
        plan = plans["a"].plan
        verify_plan(plan)
        payload = {"a": np.array([0.1] * 6 + [0.5]), "b": np.array([0.3] * 6 + [0.5])}
        for n in ("a", "b"):  # "c" stays silent: a dropout at the deadline
            co.mailbox.submit(n, pb.SubmitResultRequest(header=_hdr(n, plan, 1), plan_decision=pb.PlanDecision(participate=True)))
            co.mailbox.upload_masked(n, _hdr(n, plan, 2, pb.STAGE_PLAINTEXT_UPLOAD), plan.secagg.ring_bits,
                                    _plaintext_upload(plan, payload[n]))
        # Replays: the same sequence again, and a message naming another round, are both refused.
        with pytest.raises(ReplayedMessage, match="sequence"):
            co.mailbox.submit("a", pb.SubmitResultRequest(header=_hdr("a", plan, 2), plan_decision=pb.PlanDecision(participate=True)))
        old = pb.RequestHeader(client_id="a", session_id=plan.plan_sha256, round=plan.round - 1 or 99, stage=pb.STAGE_PLAN, sequence=9)
        with pytest.raises(StaleMessage, match="round"):
            co.mailbox.submit("a", pb.SubmitResultRequest(header=old, plan_decision=pb.PlanDecision(participate=True)))
        th.join(20)
        assert done["ok"] is True
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.COMPLETED and set(rec.survivors) == {"a", "b"} and rec.dropouts == ("c",)
        # Payloads are [w*delta, w]: FedAvg = (0.1 + 0.3) / (0.5 + 0.5) = 0.4 added to the zero adapter.
        np.testing.assert_allclose(co.global_ckpt.vector, np.full(6, 0.4), atol=1e-6)
        assert co.mailbox.poll("a", 0.1).WhichOneof("body") == "aggregate_ready"
        assert co.mailbox.poll("a", 0.1).WhichOneof("body") == "done"
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_coordinator_aborts_below_threshold_and_records_declines(tmp_path):
    co = _coordinator(tmp_path, training_s=1.0, threshold=2)
    co.recover()
    for i, n in enumerate(["a", "b", "c"]):
        co.mailbox.register(n, bytes([i + 1]) * 32)
    th = threading.Thread(target=co._run_attempt)
    th.start()
    try:
        plan = co.mailbox.poll("a", 3.0).plan
        co.mailbox.poll("b", 1.0)
        co.mailbox.submit("b", pb.SubmitResultRequest(header=_hdr("b", plan, 1), plan_decision=pb.PlanDecision(
            participate=False, decline_reason="privacy budget: spent")))
        co.mailbox.submit("a", pb.SubmitResultRequest(header=_hdr("a", plan, 1), plan_decision=pb.PlanDecision(participate=True)))
        co.mailbox.upload_masked("a", _hdr("a", plan, 2, pb.STAGE_PLAINTEXT_UPLOAD), plan.secagg.ring_bits,
                                    _plaintext_upload(plan, np.full(7, 0.1)))
        th.join(10)
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.ABORTED and "threshold" in rec.reason
        assert rec.declined == {"b": "privacy budget: spent"} and rec.dropouts == ("c",)
        assert co.global_ckpt.round == 0 and not (tmp_path / "state" / "checkpoints" / "global-r000001.safetensors").exists()
        assert co.mailbox.poll("a", 0.1).aborted.reason.startswith("only 1")
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_recovery_discards_an_uncommitted_checkpoint(tmp_path):
    co = _coordinator(tmp_path)
    ck0 = co.recover()
    # A crash after writing round 1's checkpoint but before the commit: the file exists, the log
    # has the attempt running. Restart must resume from round 0 and delete the orphan.
    co.roundlog.begin_attempt(round=1, mode="plaintext", base_hash=ck0.digest, stage="apply")
    co.store.save(1, np.ones(6, np.float32), ck0.layout_json, co.settings_json)
    co.roundlog.close()
    co2 = _coordinator(tmp_path)
    ck = co2.recover()
    assert ck.round == 0 and ck.digest == ck0.digest
    assert not co2.store.path_for(1).exists()
    assert co2.roundlog.attempts()[-1].status is AttemptStatus.ABANDONED
    co2.roundlog.close()


def test_status_cli_reads_the_round_log(tmp_path, capsys):
    from securefed.cli import main

    co = _coordinator(tmp_path)
    co.recover()
    a = co.roundlog.begin_attempt(round=1, mode="plaintext", base_hash="x", stage="plan")
    co.roundlog.update_attempt(a, cohort=["a", "b"], dropouts=["b"], timings={"plan": 1.5, "total": 2.0})
    co.roundlog.abort_attempt(a, reason="too few")
    co.roundlog.close()
    toml = tmp_path / "server.toml"
    toml.write_text(f'[server]\ncredentials_dir = "pki"\nstate_dir = "{tmp_path / "state"}"\nbase_model_dir = "m"\n'
                    '[federation]\nmode = "plaintext"\nallow_plaintext_for_debugging = true\n')
    assert main(["status", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "aborted" in out and "too few" in out and "dropouts: b" in out
    assert main(["status", "--config", str(toml), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["attempts"][0]["status"] == "aborted" and data["completed_rounds"] == 0
