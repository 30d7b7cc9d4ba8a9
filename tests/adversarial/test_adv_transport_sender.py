"""A certified client impersonating another one inside its messages, or replaying its own requests.

mTLS authenticates the connection; every field of a client message that names its sender must then
equal the name in the caller's certificate (``claimed_sender_mismatch``), at any nesting depth, and
every request carries a sequence number that must increase within a session (``SequenceGuard``).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import InvalidMessage
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import secagg_pb2 as spb
from securefed.transport.replay import SequenceGuard
from securefed.transport.service import claimed_sender_mismatch

ME, OTHER = "org-1", "org-2"


def _messages(sender_at: str, name: str) -> pb.SubmitResultRequest:
    """A share-keys submission with ``name`` in exactly one sender slot (the others say ME)."""
    pick = lambda slot: name if slot == sender_at else ME  # noqa: E731
    return pb.SubmitResultRequest(
        header=pb.RequestHeader(client_id=pick("header"), sequence=1),
        share_keys=spb.ShareKeys(
            client_id=pick("share_keys"),
            shares=[spb.EncryptedShare(from_client_id=pick(f"share{i}"), to_client_id=f"org-{i + 2}", ciphertext=b"c")
                    for i in range(3)],
        ),
    )


@settings(max_examples=60, deadline=None)
@given(slot=st.sampled_from(["header", "share_keys", "share0", "share1", "share2"]),
       name=st.sampled_from([OTHER, "", "org-1 ", "ORG-1", "org-1\x00", "org-10"]))
def test_a_sender_field_naming_anyone_but_the_certificate_is_caught_at_any_depth(slot, name):
    assert not claimed_sender_mismatch(_messages("none", ME), ME)
    assert claimed_sender_mismatch(_messages(slot, name), ME)


def test_fields_that_legitimately_name_other_clients_are_not_sender_fields():
    msg = pb.SubmitResultRequest(
        header=pb.RequestHeader(client_id=ME, sequence=2),
        unmask_response=spb.UnmaskResponse(client_id=ME, self_mask_shares=[spb.KeyShare(owner_client_id=OTHER, share=b"s")]),
    )
    assert not claimed_sender_mismatch(msg, ME)
    report = pb.PrivacyEventReport(header=pb.RequestHeader(client_id=OTHER, sequence=1))
    assert claimed_sender_mismatch(report, ME)  # a privacy report "from" another client


def test_a_replayed_or_reordered_request_is_refused_within_its_session():
    guard = SequenceGuard()
    s1, s2 = b"\x01" * 32, b"\x02" * 32
    guard.accept(ME, s1, 1)
    guard.accept(ME, s1, 5)
    for replay in (5, 4, 1):
        with pytest.raises(InvalidMessage, match="replayed"):
            guard.accept(ME, s1, replay)
    with pytest.raises(InvalidMessage):
        guard.accept(ME, s1, 0)
    guard.accept(OTHER, s1, 1)  # marks are per client ...
    guard.accept(ME, s2, 1)  # ... and per session
    guard.forget(s1)
    guard.accept(ME, s1, 1)  # a finished session's table is dropped: session ids never repeat
