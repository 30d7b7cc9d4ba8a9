"""What a member refuses on its own: CKKS decryption requests it cannot check, uncertified cohorts, graph grinding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from securefed.protocol.plan import seal_plan
from securefed.transport._generated import federation_pb2 as pb

KIT = Path(__file__).resolve().parents[2] / "clients"


def test_ckks_member_decrypts_only_a_sum_of_enough_signed_contributions():
    from securefed.client.ckks_session import checked_contributions
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import ProtocolAbort
    from securefed.protocol.ckks import Contribution, contribution_payload, encode_request

    names = ["a", "b", "c"]
    idk = {n: IdentityKeyPair.generate() for n in names}
    plan = seal_plan(pb.RoundPlan(
        round=5, global_adapter_sha256=b"\x03" * 32, mode=pb.AGGREGATION_MODE_CKKS, vector_length=4,
        cohort=[pb.CohortMember(client_id=n, identity_public_key=idk[n].public_bytes()) for n in names],
        secagg=pb.SecAggParams(threshold=2)))
    seeds = {n: bytes([1]) + f"seed of {n}".encode().ljust(64, b".") for n in names}
    sealed = {n: f"sealed tag of {n}".encode() for n in names}
    c0_sha = {n: hashlib.sha256(n.encode()).digest() for n in names}

    def signed(n, signer=None, attempt=5, tag=None):
        tag = tag or sealed[n]
        payload = contribution_payload(plan.plan_sha256, attempt, n, c0_sha[n], hashlib.sha256(seeds[n]).digest(), tag)
        return Contribution(n, c0_sha[n], seeds[n], tag, (signer or idk[n]).sign(payload))

    own = signed("a")

    def request(items):
        return encode_request(items, b"c0 of the sum")

    ok, c0 = checked_contributions(plan, 5, request([own, signed("b")]), "a", own)
    assert [c.client for c in ok] == ["a", "b"] and c0 == b"c0 of the sum"
    refusals = [
        ("threshold", [signed("b")]),  # b's ciphertext alone: decrypting it would reveal b's update
        ("include", [signed("b"), signed("c")]),  # this member's own contribution is missing
        ("not signed by b", [own, signed("b", signer=idk["c"])]),  # forged by another member
        ("not signed by b", [own, signed("b", attempt=4)]),  # replayed from another attempt
        ("not signed by b", [own, signed("b")._replace(sealed_tag=b"another tag")]),  # tag swapped after signing
        ("not signed by b", [own, signed("b")._replace(seeds=bytes([1]) + bytes(64))]),  # seeds swapped
        ("repeated", [own, own]),
        ("alters", [signed("a", tag=b"another tag a signed"), signed("b")]),  # not the entry this member uploaded
    ]
    for why, items in refusals:
        with pytest.raises(ProtocolAbort, match=why):
            checked_contributions(plan, 5, request(items), "a", own)


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
    from securefed.client.ckks_session import check_confirmations
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import ProtocolAbort
    from securefed.protocol.ckks import confirmation_payload
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


def test_graph_grinding_guard_bounds_sparse_retries_per_window_and_finished_session(tmp_path):
    from securefed.client.guards import GraphGrindingGuard
    from securefed.client.member_state import MemberState

    now = [1000.0]
    state = MemberState(tmp_path / "member_state.sqlite", "federation")
    g = GraphGrindingGuard(state, limit=2, window_s=3600.0, clock=lambda: now[0])
    assert g.allows()
    g.joined(1)  # keys advertised, then the server let the session die
    g.joined(2)
    assert not g.allows() and g.unreleased() == 2
    state.close()
    state = MemberState(tmp_path / "member_state.sqlite", "federation")  # a restart keeps the count
    g = GraphGrindingGuard(state, limit=2, window_s=3600.0, clock=lambda: now[0])
    assert not g.allows()
    state.round_completed(1)  # a round the server announces changes nothing (it can make one up)
    assert not g.allows()
    now[0] += 1.0
    g.finished(3)  # a session this member saw through itself starts afresh
    assert g.allows() and g.unreleased() == 0
    now[0] += 1.0
    g.joined(4)
    g.released(4)  # a session that reached this member's release does not count
    g.joined(5)
    g.joined(6)
    assert not g.allows()
    now[0] += 3601.0  # its own clock moves past the window: the old sessions no longer count
    assert g.allows() and g.unreleased() == 0
    state.close()
