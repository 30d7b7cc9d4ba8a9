"""A malicious server (tampering with what it sends) and misbehaving clients.

Each test plays one attack through the simulation's ``tamper`` hook or by hand, and asserts the
honest party refuses: the client aborts (``ProtocolAbort``), or the server refuses the message.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import InvalidMessage, ProtocolAbort
from securefed.secagg import (
    ClientStage,
    ConsistencySignature,
    KeyBroadcast,
    OnClientAbort,
    RoundSetup,
    SecAggClient,
    SecAggParams,
    ShareDelivery,
    ShareKind,
    SignedSurvivors,
    SimulatedRound,
    Stage,
    UnmaskRequest,
    simulate_round,
)
from securefed.secagg.client import setup_digest
from securefed.secagg.session import session_id

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

N, D = 5, 6
PARAMS = SecAggParams(threshold=3, frac_bits=8)
INPUTS = {cid: np.full(D, cid / 8) for cid in range(1, N + 1)}


def only(stage: Stage, recipient: int | None, fn):
    """A tamper hook that rewrites one stage's message (for one recipient, or for all)."""
    def hook(s, r, msg):
        return fn(msg) if s is stage and (recipient is None or r == recipient) else msg
    return hook


def aborts(tamper, match: str, **kw):
    with pytest.raises(ProtocolAbort, match=match):
        simulate_round(INPUTS, PARAMS, tamper=tamper, **kw, max_colluders=NO_COLLUDERS)


# ---- honest baseline ---------------------------------------------------------------------------

def test_honest_round_reveals_one_share_kind_per_client() -> None:
    out = simulate_round(INPUTS, PARAMS, drop={5: Stage.MASKED_INPUT}, max_colluders=NO_COLLUDERS)
    assert np.allclose(out.result.values, sum(INPUTS[c] for c in range(1, 5)))
    for c in range(1, 5):
        rev = out.clients[c].revealed
        assert rev[5] is ShareKind.MASK_KEY
        assert all(rev[s] is ShareKind.SELF_MASK for s in range(1, 5))


# ---- plan and keys -------------------------------------------------------------------------------

def test_plan_digest_must_match_the_plan() -> None:
    aborts(only(Stage.ADVERTISE_KEYS, 2, lambda m: dataclasses.replace(m, round_id=m.round_id + 1)),
           "plan digest does not match")


def test_a_different_plan_for_one_client_is_detected() -> None:
    """Client 2 is shown another model hash (with a self-consistent digest). The honest server code
    refuses its key signature; a malicious server that forwards the keys anyway is caught by every
    client, because the signatures (and the session id) bind the plan digest."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    real = rnd.outbox[1]
    other = dataclasses.replace(real, model_hash=b"\x01" * 32)
    other = dataclasses.replace(other, session_id=setup_digest(other))
    replies = {c: rnd.clients[c].handle(other if c == 2 else rnd.outbox[c]) for c in rnd.clients}
    with pytest.raises(InvalidMessage, match="another session"):
        rnd.server.receive(replies[2])
    with pytest.raises(InvalidMessage, match="signature does not verify"):  # even relabelled
        rnd.server.receive(dataclasses.replace(replies[2], session_id=real.session_id))
    keys = tuple(replies[c].keys() for c in sorted(replies))
    broadcast = KeyBroadcast(session_id(real.session_id, keys), Stage.SHARE_KEYS, keys)
    for c in rnd.clients:
        with pytest.raises(ProtocolAbort, match="signature does not verify|session id does not match"):
            rnd.clients[c].handle(broadcast)


def test_insecure_threshold_in_plan_is_refused() -> None:
    def low_t(m: RoundSetup) -> RoundSetup:
        m2 = dataclasses.replace(m, threshold=2)  # 2 of 5 is not a majority
        return dataclasses.replace(m2, session_id=setup_digest(m2))
    aborts(only(Stage.ADVERTISE_KEYS, 1, low_t), "refusing insecure parameters.*strict majority")


def test_a_threshold_too_low_for_the_clients_own_colluder_bound_is_refused() -> None:
    """t = 3 of 5 is a strict majority, but a client assuming one colluder (the default) refuses it."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    cautious = SecAggClient(1, rnd.identities[1])  # default: one colluder
    cautious.set_input(INPUTS[1])
    with pytest.raises(ProtocolAbort, match="max_colluding_members = 1.*set threshold >= 4"):
        cautious.handle(rnd.outbox[1])
    assert rnd.clients[1].handle(rnd.outbox[1]) is not None  # control: the same setup, no colluder assumed


@pytest.mark.parametrize("change", [{"threshold": 1}, {"neighbour_degree": 3}, {"frac_bits": 70},
                                    {"neighbour_degree": 4}, {"frac_bits": 31}])
def test_invalid_parameters_in_plan_are_refused(change) -> None:
    """Out-of-range values, odd degree, non-canonical k (4 = n-1 must be sent as 0), overflowing fixed point."""
    def bad(m: RoundSetup) -> RoundSetup:
        m2 = dataclasses.replace(m, **change)
        return dataclasses.replace(m2, session_id=setup_digest(m2))
    aborts(only(Stage.ADVERTISE_KEYS, 1, bad), "refusing|non-canonical|must be sent as 0")


def test_client_not_in_cohort_or_wrong_identity() -> None:
    def swap_identity(m: RoundSetup) -> RoundSetup:
        cohort = tuple(dataclasses.replace(c, identity_key=IdentityKeyPair.generate().public_bytes())
                       if c.client_id == 1 else c for c in m.cohort)
        m2 = dataclasses.replace(m, cohort=cohort)
        return dataclasses.replace(m2, session_id=setup_digest(m2))
    aborts(only(Stage.ADVERTISE_KEYS, 1, swap_identity), "another identity key")

    def drop_me(m: RoundSetup) -> RoundSetup:
        m2 = dataclasses.replace(m, cohort=tuple(c for c in m.cohort if c.client_id != 1))
        return dataclasses.replace(m2, session_id=setup_digest(m2))
    aborts(only(Stage.ADVERTISE_KEYS, 1, drop_me), "not in the cohort exactly once")


def _keys(fn):
    return only(Stage.SHARE_KEYS, 1, lambda m: dataclasses.replace(m, keys=fn(m.keys)))


def test_own_key_missing() -> None:
    aborts(_keys(lambda ks: tuple(k for k in ks if k.client_id != 1)), "own keys are missing")


def test_own_key_twice() -> None:
    aborts(_keys(lambda ks: (ks[0],) + ks), "own keys are missing|malformed")


def test_own_key_replaced() -> None:
    other = IdentityKeyPair.generate().public_bytes()
    aborts(_keys(lambda ks: tuple(dataclasses.replace(k, s_pk=other) if k.client_id == 1 else k for k in ks)),
           "other keys for this client")


def test_duplicate_keys_across_clients() -> None:
    def dup(ks):
        by = {k.client_id: k for k in ks}
        return tuple(dataclasses.replace(k, s_pk=by[3].s_pk) if k.client_id == 2 else k for k in ks)
    aborts(_keys(dup), "duplicate public keys")


def test_substituted_key_fails_signature() -> None:
    """A man-in-the-middle server swapping client 4's mask key is caught by the identity signature."""
    fake = IdentityKeyPair.generate().public_bytes()  # any 32 bytes not used elsewhere
    aborts(_keys(lambda ks: tuple(dataclasses.replace(k, c_pk=fake) if k.client_id == 4 else k for k in ks)),
           "signature does not verify")


def test_unknown_client_in_key_broadcast() -> None:
    def add_stranger(ks):
        k = dataclasses.replace(ks[-1], client_id=99, c_pk=b"\x09" * 32, s_pk=b"\x0a" * 32)
        return ks + (k,)
    aborts(_keys(add_stranger), "not in the cohort")


def test_wrong_session_id_in_key_broadcast() -> None:
    aborts(only(Stage.SHARE_KEYS, 1, lambda m: dataclasses.replace(m, session_id=b"\x00" * 32)),
           "session id does not match")


# ---- shares --------------------------------------------------------------------------------------

def _flip(b: bytes, i: int = -1) -> bytes:
    arr = bytearray(b)
    arr[i] ^= 1
    return bytes(arr)


def test_tampered_encrypted_share_aborts() -> None:
    def tamper(m: ShareDelivery) -> ShareDelivery:
        first = dataclasses.replace(m.shares[0], ciphertext=_flip(m.shares[0].ciphertext, 20))
        return dataclasses.replace(m, shares=(first,) + m.shares[1:])
    # The sender signed the ciphertext: an altered one is the server's doing and ends the session.
    aborts(only(Stage.MASKED_INPUT, 1, tamper), "does not carry its signature")


def test_share_redirected_to_another_client_aborts() -> None:
    """The server hands client 1 a ciphertext that was meant for client 2 (relabelled)."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    rnd.step()
    rnd.step()
    for_2 = next(s for s in rnd.outbox[2].shares if s.sender == 3)
    bad = dataclasses.replace(rnd.outbox[1], shares=tuple(
        dataclasses.replace(s, ciphertext=for_2.ciphertext, signature=for_2.signature) if s.sender == 3 else s
        for s in rnd.outbox[1].shares))
    # 3 signed that ciphertext for client 2: the signature names the receiver, so it does not pass for 1.
    with pytest.raises(ProtocolAbort, match="does not carry its signature"):
        rnd.clients[1].handle(bad)


def test_share_delivery_for_another_recipient() -> None:
    aborts(only(Stage.MASKED_INPUT, 1, lambda m: dataclasses.replace(m, recipient=2)), "another client")


# ---- survivors, consistency, unmasking ----------------------------------------------------------------

def test_wrong_session_id_later() -> None:
    aborts(only(Stage.CONSISTENCY, 2, lambda m: dataclasses.replace(m, session_id=_flip(m.session_id))),
           "another session")


def test_replay_from_earlier_stage_aborts() -> None:
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    for _ in range(3):
        rnd.step()
    with pytest.raises(ProtocolAbort, match="waiting for stage CONSISTENCY"):
        rnd.clients[1].handle(rnd.sent[Stage.SHARE_KEYS][1])


def test_survivors_below_threshold_refused_by_client() -> None:
    aborts(only(Stage.CONSISTENCY, 1, lambda m: dataclasses.replace(m, survivors=(1, 2))), "fewer than the threshold")


def test_survivor_list_omitting_the_client() -> None:
    aborts(only(Stage.CONSISTENCY, 1, lambda m: dataclasses.replace(m, survivors=(2, 3, 4, 5))), "omits this client")


def test_client_listed_alive_and_dropped() -> None:
    aborts(only(Stage.UNMASK, 1, lambda m: dataclasses.replace(m, dropped=(4,))), "both as survivor and as dropped")


def test_different_survivor_list_for_one_client_fails_consistency() -> None:
    """A malicious server shows client 1 a list without client 4 (so that client 1 would reveal 4's
    mask key while others reveal 4's self-mask seed) and everyone else the real list."""
    def setup():
        rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
        for _ in range(3):
            rnd.step()
        real = rnd.outbox[1]
        fake = dataclasses.replace(real, survivors=tuple(c for c in real.survivors if c != 4))
        sigs = {c: rnd.clients[c].handle(fake if c == 1 else rnd.outbox[c]) for c in rnd.clients}
        signed = tuple(SignedSurvivors(c, sigs[c].signature) for c in sorted(sigs))
        return rnd, real, fake, signed

    # The server cannot even get client 1's signature past its own (honest) check...
    rnd, real, fake, signed = setup()
    with pytest.raises(InvalidMessage, match="consistency signature does not verify"):
        rnd.server.receive(ConsistencySignature(real.session_id, Stage.CONSISTENCY, 1, signed[0].signature))

    # ...and a malicious one that forwards everything is caught by every client.
    request = UnmaskRequest(real.session_id, Stage.UNMASK, real.survivors, (), signed)
    with pytest.raises(ProtocolAbort, match="another survivor list"):
        rnd.clients[1].handle(request)
    for c in (2, 3, 4, 5):
        with pytest.raises(ProtocolAbort, match="consistency signature does not verify"):
            rnd.clients[c].handle(request)

    # Showing client 1 its fake list consistently fails too: the others signed the real list.
    rnd, real, fake, signed = setup()
    fake_request = UnmaskRequest(real.session_id, Stage.UNMASK, fake.survivors, (4,), signed)
    with pytest.raises(ProtocolAbort, match="consistency signature does not verify"):
        rnd.clients[1].handle(fake_request)
    assert rnd.clients[1].stage is ClientStage.ABORTED
    assert rnd.clients[1].revealed == {}  # it revealed nothing


def test_too_few_consistency_signatures() -> None:
    aborts(only(Stage.UNMASK, 1, lambda m: dataclasses.replace(m, signatures=m.signatures[:2])),
           "own consistency signature is missing|consistency signatures among")


def test_forged_consistency_signature() -> None:
    def forge(m: UnmaskRequest) -> UnmaskRequest:
        sigs = tuple(dataclasses.replace(s, signature=_flip(s.signature)) if s.client_id == 3 else s for s in m.signatures)
        return dataclasses.replace(m, signatures=sigs)
    aborts(only(Stage.UNMASK, 1, forge), "consistency signature does not verify")


def test_neighbour_status_must_match_received_shares() -> None:
    """Client 5 dropped after sharing; a server hiding that (dropped=()) is refused."""
    aborts(only(Stage.UNMASK, 1, lambda m: dataclasses.replace(m, dropped=())), "not the share senders",
           drop={5: Stage.MASKED_INPUT})


def test_client_aborts_are_recorded_with_drop_policy() -> None:
    """One client refusing a forged message just drops out; the others still finish the round."""
    out = simulate_round(INPUTS, PARAMS, on_client_abort=OnClientAbort.DROP,
                         tamper=only(Stage.SHARE_KEYS, 2, lambda m: dataclasses.replace(m, session_id=bytes(32))), max_colluders=NO_COLLUDERS)
    assert set(out.client_aborts) == {2}
    assert out.result.survivors == (1, 3, 4, 5)
    assert np.allclose(out.result.values, sum(INPUTS[c] for c in (1, 3, 4, 5)))


# ---- server-side refusals -------------------------------------------------------------------------

def test_late_masked_input_after_drop_is_not_counted() -> None:
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    rnd.step()
    rnd.step()
    late = rnd.clients[3].handle(rnd.outbox[3])  # computed, but not delivered before the deadline
    for cid in (1, 2, 4, 5):
        rnd.server.receive(rnd.clients[cid].handle(rnd.outbox[cid]))
    rnd.outbox = rnd.server.close_stage()
    rnd.next_stage = Stage.CONSISTENCY
    assert rnd.server.dropouts == {3: Stage.MASKED_INPUT}
    with pytest.raises(InvalidMessage, match="too late"):
        rnd.server.receive(late)
    rnd.run()
    assert rnd.server.result.survivors == (1, 2, 4, 5)
    assert np.allclose(rnd.server.result.values, sum(INPUTS[c] for c in (1, 2, 4, 5)))


def test_dropped_client_cannot_rejoin_later_stage() -> None:
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    rnd.step()
    rnd.step(drop={2: Stage.SHARE_KEYS})
    impostor = dataclasses.replace(rnd.clients[1].handle(rnd.outbox[1]), client_id=2)
    with pytest.raises(InvalidMessage, match="dropped at SHARE_KEYS"):
        rnd.server.receive(impostor)


def test_server_refuses_bad_key_signature_and_duplicate_keys() -> None:
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    replies = {c: rnd.clients[c].handle(rnd.outbox[c]) for c in (1, 2)}
    with pytest.raises(InvalidMessage, match="signature"):
        rnd.server.receive(dataclasses.replace(replies[1], signature=_flip(replies[1].signature)))
    rnd.server.receive(replies[1])
    copycat = dataclasses.replace(replies[2], s_pk=replies[1].s_pk)
    with pytest.raises(InvalidMessage):
        rnd.server.receive(copycat)


def test_server_refuses_wrong_vector() -> None:
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    rnd.step()
    rnd.step()
    msg = rnd.clients[1].handle(rnd.outbox[1])
    with pytest.raises(InvalidMessage, match="length"):
        rnd.server.receive(dataclasses.replace(msg, masked=msg.masked[:-1]))
    with pytest.raises(InvalidMessage):
        rnd.server.receive(dataclasses.replace(msg, masked=msg.masked.astype(np.uint64)))


def test_server_refuses_both_shares_of_one_client() -> None:
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    for _ in range(4):
        rnd.step(drop={5: Stage.MASKED_INPUT})
    reply = rnd.clients[1].handle(rnd.outbox[1])
    assert {s.owner for s in reply.key_shares} == {5}
    wrong = dataclasses.replace(reply, self_mask_shares=reply.self_mask_shares + reply.key_shares)
    with pytest.raises(InvalidMessage, match="both"):
        rnd.server.receive(wrong)
    moved = dataclasses.replace(reply, self_mask_shares=reply.key_shares, key_shares=reply.self_mask_shares)
    with pytest.raises(InvalidMessage, match="wrong kind"):
        rnd.server.receive(moved)
    rnd.server.receive(reply)


def test_corrupted_unmask_share_aborts_instead_of_wrong_sum() -> None:
    """A share changed in transit is detected by combine()'s extra-share check, or the key check."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    for _ in range(4):
        rnd.step()
    for cid, msg in rnd.outbox.items():
        reply = rnd.clients[cid].handle(msg)
        if cid == 1:
            s0 = reply.self_mask_shares[0]
            reply = dataclasses.replace(reply, self_mask_shares=(dataclasses.replace(s0, share=_flip(s0.share)),)
                                        + reply.self_mask_shares[1:])
        rnd.server.receive(reply)
    with pytest.raises(ProtocolAbort, match="cannot rebuild"):
        rnd.server.close_stage()
