"""Fast tests of the daemons' parts: configs, round log, checkpoints, plan digest, wire conversions,
and the coordinator's state machine driven directly (no gRPC, no model)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from securefed import secagg as sa
from securefed.client.config import load_client_config
from securefed.config import parse_model
from securefed.errors import ConfigError, InsecureParameters, InvalidMessage
from securefed.server.checkpoint import CheckpointError, CheckpointStore, adapter_digest, decode_bundle
from securefed.server.config import ServerConfig, load_server_config
from securefed.server.plan import cohort_ids, plan_bytes, seal_plan, verify_plan
from securefed.server.roundlog import AttemptStatus, RoundLog, RoundLogError
from securefed.transport._generated import federation_pb2 as pb

KIT = Path(__file__).resolve().parents[2] / "clients"


# ---- configs -------------------------------------------------------------------------------------

def test_example_configs_in_the_kit_load():
    s = load_server_config(KIT / "server.toml")
    assert s.federation.mode.value == "secagg" and s.federation.threshold == 6
    assert s.server.state_dir.is_absolute()
    c = load_client_config(KIT / "client.toml")
    assert c.privacy.target_epsilon == 8.0 and c.ledger_path.name == "ledger.sqlite"


def _server_toml(tmp_path: Path, federation: str) -> Path:
    p = tmp_path / "server.toml"
    p.write_text('[server]\ncredentials_dir = "pki"\nstate_dir = "st"\nbase_model_dir = "m"\n[federation]\n' + federation)
    return p


def test_plaintext_refused_unless_debug_flag(tmp_path):
    with pytest.raises(InsecureParameters, match="allow_plaintext_for_debugging"):
        load_server_config(_server_toml(tmp_path, 'mode = "plaintext"\n'))
    cfg = load_server_config(_server_toml(tmp_path, 'mode = "plaintext"\nallow_plaintext_for_debugging = true\n'))
    assert cfg.federation.mode.value == "plaintext"


def test_unsafe_secagg_threshold_refused(tmp_path):
    # t = 2 of 4 share holders is not a strict majority: two disjoint groups could unmask one client.
    with pytest.raises(InsecureParameters, match="threshold"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 4\nmin_clients = 4\nthreshold = 2\n"))
    with pytest.raises(InsecureParameters, match="threshold must be >= 2"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 3\nmin_clients = 3\nthreshold = 1\n"))


def test_invalid_neighbour_degree_is_one_config_line(tmp_path):
    # SecAggParams' own validation (odd degree) must surface as one line naming the key, not a pydantic dump.
    with pytest.raises(InsecureParameters) as exc:
        load_server_config(_server_toml(tmp_path, "cohort_size = 5\nmin_clients = 4\nthreshold = 3\nneighbour_degree = 1\n"))
    assert "\n" not in str(exc.value) and "federation: neighbour_degree" in str(exc.value)


def test_ckks_needs_public_context_and_typos_are_errors(tmp_path):
    with pytest.raises(InsecureParameters, match="ckks_public_context"):
        load_server_config(_server_toml(tmp_path, 'mode = "ckks"\n'))
    with pytest.raises(ConfigError, match="treshold: unknown key"):
        load_server_config(_server_toml(tmp_path, "treshold = 2\n"))
    p = tmp_path / "ckks.toml"
    p.write_text('[server]\ncredentials_dir = "pki"\nstate_dir = "st"\nbase_model_dir = "m"\nckks_public_context = "c"\n'
                 '[federation]\nmode = "ckks"\ncohort_size = 4\nmin_clients = 4\nthreshold = 2\n')
    with pytest.raises(InsecureParameters, match="strict majority"):
        load_server_config(p)


def test_client_config_needs_one_data_source_and_refuses_zero_noise(tmp_path):
    base = ('[client]\nname = "a"\nserver = "h:1"\ncredentials_dir = "p"\nstate_dir = "s"\nbase_model_dir = "m"\n'
            '[privacy]\ntarget_epsilon = 1.0\ndelta = 1e-6\n')
    p = tmp_path / "c.toml"
    p.write_text(base + "[data]\n")
    with pytest.raises(ConfigError, match="data.path"):
        load_client_config(p)
    p.write_text(base + '[data]\npath = "d.jsonl"\n[training]\nnoise_multiplier = 0.0\n')
    with pytest.raises(ConfigError, match="no differential privacy"):
        load_client_config(p)


# ---- round log -----------------------------------------------------------------------------------

def test_roundlog_allows_one_completion_per_round_and_recovers(tmp_path):
    log = RoundLog(tmp_path / "r.sqlite")
    a1 = log.begin_attempt(round=1, mode="secagg", base_hash="00", stage="plan")
    with pytest.raises(RoundLogError, match="already running"):
        log.begin_attempt(round=1, mode="secagg", base_hash="00", stage="plan")
    log.complete_attempt(a1, result_hash="aa", checkpoint="c1")
    a2 = log.begin_attempt(round=1, mode="secagg", base_hash="00", stage="plan")
    assert a2 > a1
    # The database itself refuses a second completion of round 1 (an update applied twice).
    with pytest.raises(RoundLogError, match="already completed"):
        log.complete_attempt(a2, result_hash="bb", checkpoint="c1b")
    log.abort_attempt(a2, reason="test")
    a3 = log.begin_attempt(round=2, mode="secagg", base_hash="aa", stage="plan")
    log.close()
    # A crash leaves a3 running; reopening recovers it as abandoned, never reusing its id.
    log = RoundLog(tmp_path / "r.sqlite")
    assert log.recover() == [a3]
    st = {a.attempt: a.status for a in log.attempts()}
    assert st == {a1: AttemptStatus.COMPLETED, a2: AttemptStatus.ABORTED, a3: AttemptStatus.ABANDONED}
    a4 = log.begin_attempt(round=2, mode="secagg", base_hash="aa", stage="plan")
    assert a4 > a3 and log.last_completed().attempt == a1
    assert log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=0, entry_hash="e0") is True
    assert log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=0, entry_hash="e0") is False
    # A forked or rewritten ledger is refused: another hash at a known position, or a broken link.
    with pytest.raises(RoundLogError, match="differs"):
        log.record_privacy_event(a4 + 1, "x", "{}", b"s", ledger_seq=0, entry_hash="other")
    with pytest.raises(RoundLogError, match="chain"):
        log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=1, entry_hash="e1", prev_hash="not-e0")
    assert log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=1, entry_hash="e1", prev_hash="e0") is False
    assert log.record_privacy_event(a4 + 1, "x", "{}", b"s", ledger_seq=1, entry_hash="e1", prev_hash="e0") is True
    assert log.ledger_heads() == {"x": (2, "e1")}
    log.close()
    ro = RoundLog(tmp_path / "r.sqlite", readonly=True)
    assert ro.completed_rounds() == 1 and len(ro.privacy_events("x")) == 2
    ro.close()


# ---- checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_roundtrip_tamper_and_orphans(tmp_path):
    store = CheckpointStore(tmp_path)
    v = np.linspace(-1, 1, 33, dtype=np.float32)
    c = store.save(3, v, '{"layout":1}', '{"s":1}', server_state=np.ones(4, np.float32))
    got = store.load(3, expected_digest=c.digest)
    assert np.array_equal(got.vector, v) and got.settings == {"s": 1} and np.array_equal(got.server_state, np.ones(4))
    # The digest binds the settings too: the same vector under other settings is another bundle.
    assert adapter_digest(v, '{"layout":1}', '{"s":2}', np.ones(4, np.float32)) != c.digest
    raw = bytearray(c.path.read_bytes())
    raw[-3] ^= 0x40
    with pytest.raises(CheckpointError, match="digest"):
        decode_bundle(bytes(raw))
    with pytest.raises(CheckpointError, match="round log"):
        store.load(3, expected_digest="0" * 64)
    store.save(4, v, "{}")
    assert [p.name for p in store.discard_after(3)] == ["global-r000004.safetensors"]
    assert not list(tmp_path.glob(".*tmp*"))


# ---- plan digest and wire conversions ------------------------------------------------------------

def _plan(**kw) -> pb.RoundPlan:
    plan = pb.RoundPlan(round=7, global_adapter_sha256=b"\x01" * 32, mode=pb.AGGREGATION_MODE_SECAGG, vector_length=10,
                        cohort=[pb.CohortMember(client_id=n, identity_public_key=bytes([i]) * 32)
                                for i, n in enumerate(["a", "b", "c"], 1)],
                        secagg=pb.SecAggParams(threshold=2, ring_bits=64, frac_bits=32, clip=1.0))
    for k, v in kw.items():
        setattr(plan, k, v)
    return seal_plan(plan)


def test_plan_digest_binds_every_field():
    plan = _plan()
    verify_plan(plan)
    for field, value in (("round", 8), ("vector_length", 11), ("stage_timeout_ms", 5)):
        other = pb.RoundPlan()
        other.CopyFrom(plan)
        setattr(other, field, value)
        with pytest.raises(InvalidMessage, match="digest"):
            verify_plan(other)
    other = pb.RoundPlan()
    other.CopyFrom(plan)
    other.cohort[1].identity_public_key = b"\x09" * 32
    with pytest.raises(InvalidMessage):
        verify_plan(other)
    ids = cohort_ids(plan)
    assert ids.by_name == {"a": 1, "b": 2, "c": 3} and ids.name_of(2) == "b"
    with pytest.raises(InvalidMessage):
        ids.int_of("mallory")


def test_secagg_round_through_the_wire_conversions():
    """Every message crosses proto form both ways; the sum is still exact (conversions are lossless)."""
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.secagg.client import setup_digest
    from securefed.server import wire

    names = ["a", "b", "c"]
    idk = {n: IdentityKeyPair.generate() for n in names}
    plan = pb.RoundPlan(round=3, global_adapter_sha256=b"\x02" * 32, mode=pb.AGGREGATION_MODE_SECAGG, vector_length=5,
                        cohort=[pb.CohortMember(client_id=n, identity_public_key=idk[n].public_bytes()) for n in names],
                        secagg=pb.SecAggParams(threshold=2, neighbours=0, ring_bits=64, frac_bits=32, clip=1.0))
    seal_plan(plan)
    ids = cohort_ids(plan)
    params = sa.SecAggParams(threshold=2, ring_bits=64, frac_bits=32, clip=1.0)
    server = sa.SecAggServer(params, round_id=3, vector_length=5, cohort={ids.int_of(n): idk[n].public_bytes() for n in names},
                             plan=plan_bytes(plan), model_hash=b"\x02" * 32)
    server.start()
    inputs = {n: np.array([0.1, -0.2, 0.3, 0.0, 0.3]) * (i + 1) for i, n in enumerate(names)}  # within clip
    clients = {}
    setup0 = wire.round_setup(plan, ids, b"\0" * 32)
    setup = sa.RoundSetup(**{**setup0.__dict__, "session_id": setup_digest(setup0)})
    assert setup.session_id == server.plan_digest
    for n in names:
        c = sa.SecAggClient(ids.int_of(n), idk[n])
        c.set_input(inputs[n])
        adv = c.handle(setup)
        server.receive(wire.advertise_from_pb(wire.advertise_to_pb(adv, ids), adv.session_id, ids))
        clients[n] = c
    out = server.close_stage()
    for n in names:
        kb = wire.key_broadcast_from_pb(wire.key_broadcast_to_pb(out[ids.int_of(n)], ids), ids)
        r = clients[n].handle(kb)
        server.receive(wire.share_keys_from_pb(wire.share_keys_to_pb(r, ids), r.session_id, ids))
    out = server.close_stage()
    sid = server.session_id
    for n in names:
        sd = wire.share_delivery_from_pb(wire.share_delivery_to_pb(out[ids.int_of(n)], ids), sid, ids.int_of(n), ids)
        m = clients[n].handle(sd)
        bits, data = wire.masked_to_bytes(m)
        server.receive(wire.masked_from_bytes(data, bits, 5, sid, ids.int_of(n)))
    out = server.close_stage()
    for n in names:
        r = clients[n].handle(wire.survivors_from_pb(wire.survivors_to_pb(out[ids.int_of(n)], ids), sid, ids))
        server.receive(wire.consistency_from_pb(wire.consistency_to_pb(r, ids), sid, ids))
    out = server.close_stage()
    for n in names:
        r = clients[n].handle(wire.unmask_request_from_pb(wire.unmask_request_to_pb(out[ids.int_of(n)], ids), sid, ids))
        server.receive(wire.unmask_from_pb(wire.unmask_to_pb(r, ids), sid, ids))
    server.close_stage()
    np.testing.assert_allclose(server.result.values, sum(inputs.values()), atol=3 * 2.0**-32)
    with pytest.raises(InvalidMessage, match="bytes"):
        wire.masked_from_bytes(b"\0" * 39, 64, 5, sid, 1)


# ---- the coordinator, driven directly --------------------------------------------------------------

def _coordinator(tmp_path: Path, *, training_s: float = 5.0, threshold: int = 2):
    from securefed.server.app import ServerApp

    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"rounds": 1, "cohort_size": 3, "min_clients": 3, "threshold": threshold, "mode": "plaintext",
                       "allow_plaintext_for_debugging": True},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "deadlines": {"training_s": training_s, "join_s": 10.0, "poll_s": 0.5},
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
    return enc.astype("<u8").tobytes()


def _hdr(name: str, plan: pb.RoundPlan, seq: int, stage=pb.STAGE_PLAN) -> pb.RequestHeader:
    return pb.RequestHeader(client_id=name, session_id=plan.plan_sha256, round=plan.round, stage=stage, sequence=seq)


def test_coordinator_round_with_a_silent_client_and_replay_rejection(tmp_path):
    co = _coordinator(tmp_path, training_s=1.5)
    co.recover()
    names = ["a", "b", "c"]
    for i, n in enumerate(names):
        co.register(n, bytes([i + 1]) * 32)
    done = {}
    th = threading.Thread(target=lambda: done.setdefault("ok", co.run()))
    th.start()
    try:
        plans = {n: co.poll(n, 3.0) for n in names}
        assert all(t.WhichOneof("body") == "plan" for t in plans.values())
        plan = plans["a"].plan
        verify_plan(plan)
        payload = {"a": np.array([0.1] * 6 + [0.5]), "b": np.array([0.3] * 6 + [0.5])}
        for n in ("a", "b"):  # "c" stays silent: a dropout at the deadline
            co.submit(n, pb.SubmitResultRequest(header=_hdr(n, plan, 1), plan_decision=pb.PlanDecision(participate=True)))
            co.upload_masked(n, _hdr(n, plan, 2, pb.STAGE_PLAINTEXT_UPLOAD), 64, _plaintext_upload(plan, payload[n]))
        # Replays: the same sequence again, and a message naming another round, are both refused.
        with pytest.raises(InvalidMessage, match="sequence"):
            co.submit("a", pb.SubmitResultRequest(header=_hdr("a", plan, 2), plan_decision=pb.PlanDecision(participate=True)))
        old = pb.RequestHeader(client_id="a", session_id=plan.plan_sha256, round=plan.round - 1 or 99, stage=pb.STAGE_PLAN, sequence=9)
        with pytest.raises(InvalidMessage, match="round"):
            co.submit("a", pb.SubmitResultRequest(header=old, plan_decision=pb.PlanDecision(participate=True)))
        th.join(20)
        assert done["ok"] is True
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.COMPLETED and set(rec.survivors) == {"a", "b"} and rec.dropouts == ("c",)
        # Payloads are [w*delta, w]: FedAvg = (0.1 + 0.3) / (0.5 + 0.5) = 0.4 added to the zero adapter.
        np.testing.assert_allclose(co.global_ckpt.vector, np.full(6, 0.4), atol=1e-6)
        assert co.poll("a", 0.1).WhichOneof("body") == "aggregate_ready"
        assert co.poll("a", 0.1).WhichOneof("body") == "done"
    finally:
        co.stop()
        th.join(5)
        co.roundlog.close()


def test_coordinator_aborts_below_threshold_and_records_declines(tmp_path):
    co = _coordinator(tmp_path, training_s=1.0, threshold=2)
    co.recover()
    for i, n in enumerate(["a", "b", "c"]):
        co.register(n, bytes([i + 1]) * 32)
    th = threading.Thread(target=co._run_attempt)
    th.start()
    try:
        plan = co.poll("a", 3.0).plan
        co.poll("b", 1.0)
        co.submit("b", pb.SubmitResultRequest(header=_hdr("b", plan, 1), plan_decision=pb.PlanDecision(
            participate=False, decline_reason="privacy budget: spent")))
        co.submit("a", pb.SubmitResultRequest(header=_hdr("a", plan, 1), plan_decision=pb.PlanDecision(participate=True)))
        co.upload_masked("a", _hdr("a", plan, 2, pb.STAGE_PLAINTEXT_UPLOAD), 64, _plaintext_upload(plan, np.full(7, 0.1)))
        th.join(10)
        rec = co.roundlog.attempts()[-1]
        assert rec.status is AttemptStatus.ABORTED and "threshold" in rec.reason
        assert rec.declined == {"b": "privacy budget: spent"} and rec.dropouts == ("c",)
        assert co.global_ckpt.round == 0 and not (tmp_path / "state" / "checkpoints" / "global-r000001.safetensors").exists()
        assert co.poll("a", 0.1).aborted.reason.startswith("only 1")
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


# ---- CKKS: a member is not a decryption oracle ----------------------------------------------------

def test_ckks_member_decrypts_only_a_sum_of_enough_signed_contributions():
    from securefed.client.ckks import checked_contributions
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import ProtocolAbort
    from securefed.server.drivers import contribution_digest, contribution_payload, encode_contributions

    names = ["a", "b", "c"]
    idk = {n: IdentityKeyPair.generate() for n in names}
    plan = seal_plan(pb.RoundPlan(
        round=5, global_adapter_sha256=b"\x03" * 32, mode=pb.AGGREGATION_MODE_CKKS, vector_length=4,
        cohort=[pb.CohortMember(client_id=n, identity_public_key=idk[n].public_bytes()) for n in names],
        secagg=pb.SecAggParams(threshold=2)))
    chunks = {n: [f"ciphertext of {n}".encode()] for n in names}

    def signed(n, signer=None, attempt=5):
        d = contribution_digest(chunks[n])
        return (n, (signer or idk[n]).sign(contribution_payload(plan.plan_sha256, attempt, n, d)), chunks[n])

    own = contribution_digest(chunks["a"])
    ok = checked_contributions(plan, 5, encode_contributions([signed("a"), signed("b")]), "a", own)
    assert [c for c, _ in ok] == ["a", "b"]
    refusals = [
        ("threshold", [signed("b")]),  # b's ciphertext alone: decrypting it would reveal b's update
        ("include", [signed("b"), signed("c")]),  # this member's own contribution is missing
        ("not signed by b", [signed("a"), signed("b", signer=idk["c"])]),  # forged by another member
        ("not signed by b", [signed("a"), signed("b", attempt=4)]),  # replayed from another attempt
        ("repeated", [signed("a"), signed("a")]),
    ]
    for why, items in refusals:
        with pytest.raises(ProtocolAbort, match=why):
            checked_contributions(plan, 5, encode_contributions(items), "a", own)
    chunks["a"] = [b"tampered"]
    with pytest.raises(ProtocolAbort, match="alters"):
        checked_contributions(plan, 5, encode_contributions([signed("a"), signed("b")]), "a", own)


# ---- cohort certificates -------------------------------------------------------------------------

def test_cohort_member_certificates_are_checked_against_the_pinned_ca(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from securefed.client.cohort import load_ca, verify_member
    from securefed.errors import ProtocolAbort
    from securefed.transport import identity as tid

    def der(d, name):
        pem = (d / "clients" / f"{name}.pem").read_bytes()
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)

    fed, rogue = tmp_path / "fed", tmp_path / "rogue"
    for d in (fed, rogue):
        tid.init_ca(d)
        tid.issue_client(d, "alice")
    tid.issue_client(fed, "bob")
    ca = load_ca((fed / "ca.pem").read_bytes())
    creds = tid.load_client_credentials(fed, "alice")
    alice_key = tid.raw_public_key(creds.identity_public_key)
    verify_member(ca, der(fed, "alice"), "alice", alice_key)
    bob_key = tid.raw_public_key(tid.load_client_credentials(fed, "bob").identity_public_key)
    cases = [
        ("not issued by the federation CA", der(rogue, "alice"), "alice",
         tid.raw_public_key(tid.load_client_credentials(rogue, "alice").identity_public_key)),
        ("names another client", der(fed, "bob"), "alice", bob_key),
        ("not the certified one", der(fed, "alice"), "alice", bob_key),  # a key the server made up
        ("unreadable", b"junk", "alice", alice_key),
    ]
    for why, cert, name, key in cases:
        with pytest.raises(ProtocolAbort, match=why):
            verify_member(ca, cert, name, key)
    import datetime as dt

    with pytest.raises(ProtocolAbort, match="not valid now"):
        verify_member(ca, der(fed, "alice"), "alice", alice_key, now=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))


def test_ckks_member_decrypts_only_a_contributor_set_a_majority_confirmed():
    """Different contributor sets per decryptor would let the server difference sums: a member
    decrypts only the request it checked itself, once >= t (a strict majority) confirmed that request."""
    from securefed.client.ckks import check_confirmations
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import ProtocolAbort
    from securefed.server.drivers import confirmation_payload
    from securefed.transport._generated import secagg_pb2 as spb

    names = ["a", "b", "c", "d", "e"]
    idk = {n: IdentityKeyPair.generate() for n in names}
    plan = seal_plan(pb.RoundPlan(
        round=9, global_adapter_sha256=b"\x04" * 32, mode=pb.AGGREGATION_MODE_CKKS, vector_length=4,
        cohort=[pb.CohortMember(client_id=n, identity_public_key=idk[n].public_bytes()) for n in names],
        secagg=pb.SecAggParams(threshold=3)))
    mine, other = b"\x11" * 32, b"\x22" * 32

    def req(digest, signers, signed_digest=None):
        payload = confirmation_payload(plan.plan_sha256, 9, signed_digest or digest)
        return pb.DecryptRequest(request_sha256=digest, confirmations=[
            spb.ConsistencySignature(client_id=n, signature=idk[n].sign(payload)) for n in signers])

    assert check_confirmations(plan, 9, mine, req(mine, ["a", "b", "c"])) == 3
    cases = [
        ("another contributor set", req(other, ["a", "b", "c"])),  # not the request this member checked
        ("only 2 members", req(mine, ["a", "b"])),  # below the threshold
        ("does not verify", req(mine, ["a", "b", "c"], signed_digest=other)),  # confirmations of another set
        ("repeated", req(mine, ["a", "a", "b"])),
    ]
    for why, r in cases:
        with pytest.raises(ProtocolAbort, match=why):
            check_confirmations(plan, 9, mine, r)
    weak = pb.RoundPlan()
    weak.CopyFrom(plan)
    weak.secagg.threshold = 2  # 2 of 5 is no majority: two sets could both be confirmed
    with pytest.raises(ProtocolAbort, match="strict majority"):
        check_confirmations(weak, 9, mine, req(mine, ["a", "b"]))


def test_plan_cohort_must_be_certified_members(tmp_path):
    """The member-side cohort check on plans a malicious server could send: a member without its
    certificate, or a real certificate next to a key the server made up, is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from securefed.client.cohort import load_ca, verify_cohort
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import ProtocolAbort
    from securefed.transport import identity as tid

    tid.init_ca(tmp_path)
    members = []
    for n in ("alice", "bob", "carol"):
        tid.issue_client(tmp_path, n)
        der = x509.load_pem_x509_certificate((tmp_path / "clients" / f"{n}.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER)
        key = tid.raw_public_key(tid.load_client_credentials(tmp_path, n).identity_public_key)
        members.append(pb.CohortMember(client_id=n, identity_public_key=key, certificate=der))
    ca = load_ca((tmp_path / "ca.pem").read_bytes())
    verify_cohort(ca, pb.RoundPlan(cohort=members))
    padded = [*members, pb.CohortMember(client_id="dave", identity_public_key=IdentityKeyPair.generate().public_bytes())]
    with pytest.raises(ProtocolAbort, match="without its certificate"):
        verify_cohort(ca, pb.RoundPlan(cohort=padded))
    swapped = list(members)
    swapped[1] = pb.CohortMember(client_id="bob", identity_public_key=IdentityKeyPair.generate().public_bytes(),
                                 certificate=members[1].certificate)
    with pytest.raises(ProtocolAbort, match="not the certified one"):
        verify_cohort(ca, pb.RoundPlan(cohort=swapped))


def test_graph_grinding_guard_bounds_sparse_retries_per_adapter():
    from securefed.client.guards import GraphGrindingGuard

    g = GraphGrindingGuard(limit=2)
    assert g.allows("g0")
    g.joined("g0", 1)  # keys advertised, then the server let the session die
    g.joined("g0", 2)
    assert not g.allows("g0") and g.unreleased("g0") == 2
    assert g.allows("g1")  # a completed round (new adapter) starts afresh
    g.joined("g1", 3)
    g.released(3)  # a session that reached this member's release does not count
    g.joined("g1", 4)
    assert g.allows("g1") and g.unreleased("g1") == 1
