"""Certificates a malicious server could put in a plan's cohort to vouch for keys it controls.

``securefed.client.cohort.verify_member`` is the member-side check of each listed member (pinned
federation CA, client certificate, name, bound identity key). Beyond the owner's own cases, this tries
what a server has to hand: its own TLS certificate (from the right CA, but not a client one), a client
certificate re-signed by a CA of its own with the federation CA's name, and arbitrary bit flips.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.client.cohort import verify_member
from securefed.errors import ProtocolAbort
from securefed.transport import identity as tid

FED = tid.create_ca()
ALICE_ID = ed25519.Ed25519PrivateKey.generate().public_key()
ALICE_KEY = tid.raw_public_key(ALICE_ID)
ALICE_DER = FED.issue_client("alice", ALICE_ID)[0].public_bytes(serialization.Encoding.DER)


def test_the_genuine_member_certificate_verifies():
    verify_member(FED.certificate, ALICE_DER, "alice", ALICE_KEY)


def test_the_servers_own_certificate_cannot_vouch_for_a_member():
    server_der = FED.issue_server(["127.0.0.1"])[0].public_bytes(serialization.Encoding.DER)
    with pytest.raises(ProtocolAbort):
        verify_member(FED.certificate, server_der, "alice", ALICE_KEY)


def test_a_look_alike_ca_with_the_same_name_cannot_issue_members():
    # Another CA the server generated (same subject fields as every securefed CA): signature fails.
    rogue = tid.create_ca()
    assert rogue.certificate.subject == FED.certificate.subject
    forged = rogue.issue_client("alice", ALICE_ID)[0].public_bytes(serialization.Encoding.DER)
    with pytest.raises(ProtocolAbort, match="not issued by the federation CA"):
        verify_member(FED.certificate, forged, "alice", ALICE_KEY)
    # and the rogue CA itself, listed as if it were a member's certificate
    with pytest.raises(ProtocolAbort):
        verify_member(FED.certificate, rogue.certificate.public_bytes(serialization.Encoding.DER), "alice", ALICE_KEY)


@settings(max_examples=150, deadline=None)
@given(pos=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_any_bit_flip_in_a_member_certificate_is_refused(pos, bit):
    der = bytearray(ALICE_DER)
    der[pos % len(der)] ^= 1 << bit
    try:
        verify_member(FED.certificate, bytes(der), "alice", ALICE_KEY)
    except ProtocolAbort:
        return
    pytest.fail(f"a certificate with bit {bit} of byte {pos % len(der)} flipped still verified")


def test_a_plan_padded_with_identities_the_server_made_up_is_refused():
    """The cohort-padding attack on the plan itself (``verify_cohort``, run by every member in
    ``_on_plan``): a Sybil listed without a certificate, with a certificate from a CA of the server's
    own, or under a genuine member's certificate but with a key the server holds."""
    from securefed.client.cohort import verify_cohort
    from securefed.transport._generated import federation_pb2 as pb

    bob_id = ed25519.Ed25519PrivateKey.generate().public_key()
    bob_der = FED.issue_client("bob", bob_id)[0].public_bytes(serialization.Encoding.DER)
    genuine = [pb.CohortMember(client_id="alice", identity_public_key=ALICE_KEY, certificate=ALICE_DER),
               pb.CohortMember(client_id="bob", identity_public_key=tid.raw_public_key(bob_id), certificate=bob_der)]
    verify_cohort(FED.certificate, pb.RoundPlan(cohort=genuine))

    sybil_id = ed25519.Ed25519PrivateKey.generate().public_key()
    rogue_der = tid.create_ca().issue_client("sybil", sybil_id)[0].public_bytes(serialization.Encoding.DER)
    sybils = {
        "without its certificate": pb.CohortMember(client_id="sybil", identity_public_key=tid.raw_public_key(sybil_id)),
        "not issued by the federation CA": pb.CohortMember(client_id="sybil", identity_public_key=tid.raw_public_key(sybil_id),
                                                           certificate=rogue_der),
        "not the certified one": pb.CohortMember(client_id="bob", identity_public_key=tid.raw_public_key(sybil_id),
                                                 certificate=bob_der),
    }
    for why, member in sybils.items():
        cohort = [genuine[0], member] if member.client_id == "bob" else [*genuine, member]
        with pytest.raises(ProtocolAbort, match=why):
            verify_cohort(FED.certificate, pb.RoundPlan(cohort=cohort))
