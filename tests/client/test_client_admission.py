"""Admission: the member's pure verdict on a plan (leave, decline with a reason, or go on)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securefed.client.admission import check_payload_size, check_plan, decline_reason
from securefed.client.cohort import load_ca
from securefed.client.config import ClientConfig
from securefed.client.guards import GraphGrindingGuard
from securefed.client.member_state import MemberState
from securefed.config import parse_model
from securefed.errors import InvalidMessage, ProtocolAbort
from securefed.protocol.plan import seal_plan
from securefed.training.config import LoraSettings
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb

NAMES = ("alice", "bob", "carol", "dave")


def _config(**client) -> ClientConfig:
    return parse_model(ClientConfig, {
        "client": {"name": "alice", "server": "127.0.0.1:1", "credentials_dir": "pki", "state_dir": "s",
                   "base_model_dir": "m", **client},
        "data": {"demo_client": 0, "demo_clients": 3},
        "privacy": {"target_epsilon": 8.0, "delta": 1e-5},
    })


def _plan(mode=pb.AGGREGATION_MODE_SECAGG, n=4, t=3, neighbours=0, members=None) -> pb.RoundPlan:
    cohort = members or [pb.CohortMember(client_id=c, identity_public_key=bytes([i + 1]) * 32)
                         for i, c in enumerate(NAMES[:n])]
    return seal_plan(pb.RoundPlan(round=4, global_adapter_sha256=b"\x05" * 32, mode=mode, vector_length=9,
                                  cohort=cohort, secagg=pb.SecAggParams(threshold=t, neighbours=neighbours)))


LORA = LoraSettings(rank=4, alpha=8.0)


def _guard(limit: int) -> GraphGrindingGuard:
    return GraphGrindingGuard(MemberState(":memory:", "federation"), limit)


def _reason(plan, config=None, lora=LORA, guard=None):
    return decline_reason(plan, lora, config or _config(), guard or _guard(2))


def test_a_plan_within_every_rule_is_taken():
    assert _reason(_plan()) is None
    assert _reason(_plan(pb.AGGREGATION_MODE_CKKS, t=3), _config(ckks_secret_context="ctx")) is None
    assert _reason(_plan(pb.AGGREGATION_MODE_PLAINTEXT), _config(allow_plaintext_for_debugging=True)) is None


@pytest.mark.parametrize("plan, config, lora, why", [
    (_plan(n=3, t=2), _config(min_cohort_size=4), LORA, "min_cohort_size 4"),
    (_plan(t=2), _config(min_threshold=3), LORA, "min_threshold 3"),
    (_plan(), _config(), LoraSettings(rank=8, alpha=8.0), None),  # no [lora] expectation: any settings
    (_plan(pb.AGGREGATION_MODE_CKKS, t=3), _config(), LORA, "ckks_secret_context"),
    (_plan(pb.AGGREGATION_MODE_CKKS, t=2), _config(ckks_secret_context="ctx"), LORA, "strict majority"),
    (_plan(pb.AGGREGATION_MODE_PLAINTEXT), _config(), LORA, "allow_plaintext_for_debugging"),
])
def test_each_rule_declines_with_its_reason(plan, config, lora, why):
    got = _reason(plan, config, lora)
    assert (got is None) if why is None else (why in got)


def test_lora_expectation_and_graph_guard_decline():
    cfg = parse_model(ClientConfig, {**_config().model_dump(mode="json"), "lora": {"rank": 8, "alpha": 8.0}})
    assert "differ from this member's [lora]" in _reason(_plan(), cfg)
    assert _reason(_plan(), cfg, LoraSettings(rank=8, alpha=8.0)) is None
    guard = _guard(1)
    sparse = _plan(neighbours=2)
    assert _reason(sparse, guard=guard) is None
    guard.joined(1)  # one sparse session in this federation round ended before release
    assert "graph-grinding guard" in _reason(sparse, guard=guard)
    assert _reason(_plan(neighbours=0), guard=guard) is None  # the complete graph is not limited


def test_check_plan_leaves_plans_no_honest_server_sends(tmp_path: Path):
    tid.init_ca(tmp_path)
    members, keys = [], {}
    for n in NAMES[:3]:
        tid.issue_client(tmp_path, n)
        der = x509.load_pem_x509_certificate((tmp_path / "clients" / f"{n}.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER)
        keys[n] = tid.raw_public_key(tid.load_client_credentials(tmp_path, n).identity_public_key)
        members.append(pb.CohortMember(client_id=n, identity_public_key=keys[n], certificate=der))
    ca = load_ca((tmp_path / "ca.pem").read_bytes())
    plan = _plan(n=3, t=2, members=members)
    check_plan(plan, "alice", keys["alice"], ca)  # the honest plan passes
    with pytest.raises(ProtocolAbort, match="another identity key"):
        check_plan(plan, "alice", keys["bob"], ca)
    with pytest.raises(ProtocolAbort, match="does not list this member"):
        check_plan(plan, "dave", keys["alice"], ca)
    tampered = pb.RoundPlan()
    tampered.CopyFrom(plan)
    tampered.vector_length = 10
    with pytest.raises(InvalidMessage, match="digest"):
        check_plan(tampered, "alice", keys["alice"], ca)
    odd = pb.RoundPlan()
    odd.CopyFrom(plan)
    odd.mode = 99
    with pytest.raises(ProtocolAbort, match="unknown aggregation mode"):
        check_plan(seal_plan(odd), "alice", keys["alice"], ca)
    check_payload_size(plan, 9)
    with pytest.raises(ProtocolAbort, match="vector_length"):
        check_payload_size(plan, 8)


def _big_plan(n: int, t: int, neighbours: int = 0) -> pb.RoundPlan:
    members = [pb.CohortMember(client_id=("alice" if i == 0 else f"m{i:02d}"), identity_public_key=bytes([i + 1]) * 32)
               for i in range(n)]
    return _plan(n=n, t=t, neighbours=neighbours, members=sorted(members, key=lambda m: m.client_id))


def test_a_member_declines_a_threshold_its_own_colluder_bound_refuses():
    """The issue's 'done when': with max_colluding_members = 2 a member declines t = 6 of 10 (two colluders
    could rebuild both secrets of one member), and takes t = 7; whatever the server assumed."""
    two = _config(max_colluding_members=2)
    why = _reason(_big_plan(10, 6), two)
    assert "max_colluding_members = 2" in why and "threshold >= 7" in why
    assert _reason(_big_plan(10, 7), two) is None
    # The default (one colluder) takes t = 6 of 10 but not t = 5; a member trusting everyone takes t = 5.
    assert _reason(_big_plan(10, 6)) is None
    assert "max_colluding_members = 1" in _reason(_big_plan(10, 5))
    assert "strict majority" in _reason(_big_plan(10, 5), _config(max_colluding_members=0))
    # SecAgg+: m = k + 1 holders, not n. n = 16, k = 12: t = 7 falls to two colluders, t = 8 holds.
    assert "threshold >= 8" in _reason(_big_plan(16, 7, neighbours=12), two)
    assert _reason(_big_plan(16, 8, neighbours=12), two) is None
    # Three listed members can never outvote three colluders: declined whatever the threshold.
    assert "more than the 3 share holders" in _reason(_plan(n=3, t=3), _config(max_colluding_members=3))


def test_the_colluder_rule_sits_with_the_cohort_rules_and_ignores_ckks_and_plaintext():
    from securefed.client.admission import cohort_reason

    c = _config(max_colluding_members=2).client
    assert cohort_reason(_big_plan(10, 6), c) is not None
    # CKKS members all hold the secret key (any colluder decrypts everything: threat_models/ckks.md), so the
    # secagg bound does not apply there; its own rule is a strict majority of the cohort.
    ckks = _big_plan(10, 6)
    ckks.mode = pb.AGGREGATION_MODE_CKKS
    assert cohort_reason(seal_plan(ckks), c) is None
    ckks.secagg.threshold = 5
    assert "strict majority" in cohort_reason(seal_plan(ckks), c)
