"""One member sending garbage shares cannot stall the federation, and cannot frame anyone.

Issue 17, attack 1: a member sends shares that do not decrypt to two honest members (n = 5, t = 4).
Before attribution every attempt ended "only 3 clients answered stage MASKED_INPUT", for ever, and
nobody could say who was at fault. Now the honest recipients report the sender with evidence that
opens exactly that ciphertext (``secagg.attribution``); the server names the culprit, and a
federation that excludes it completes its round in the next attempt. A member that accuses an honest
peer is the one found at fault. Against the real state machines, driven in memory.
"""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np
import pytest

from securefed.crypto.aead import decrypt_share
from securefed.errors import CryptoError, ProtocolAbort
from securefed.secagg import SecAggParams, SimulatedRound, Stage, make_identities
from securefed.secagg.attribution import Fault, make_complaint, rejudge, share_key, sign_shares
from securefed.secagg.messages import EncryptedShare
from securefed.secagg.simulation import OnClientAbort

D = 12
TOL = 5 * 2 ** -8


def _inputs(ids, seed=7):
    rng = np.random.default_rng(seed)  # not secret: test inputs
    return {c: rng.uniform(-0.5, 0.5, D) for c in ids}


def garbage_from(rnd: SimulatedRound, culprit: int, victims: set[int], *, keep_signature: bool = False):
    """A malicious member: its shares for ``victims`` are random bytes, signed with its own identity (so
    the server relays them) over the keys a real share would use."""
    def corrupt(stage, cid, reply):
        if stage is not Stage.SHARE_KEYS or cid != culprit:
            return reply
        broadcast = rnd.sent[Stage.SHARE_KEYS][culprit]
        keys = {k.client_id: k for k in broadcast.keys}
        inbox = {k.owner: (k.key, keys[k.owner].inbox_root) for k in broadcast.inbox_keys}
        shares = tuple(EncryptedShare(culprit, s.receiver, secrets.token_bytes(len(s.ciphertext)))
                       if s.receiver in victims else s for s in reply.shares)
        sig = reply.signature if keep_signature else sign_shares(
            shares, identity=rnd.identities[culprit], sender_c_pk=keys[culprit].c_pk, session_id=reply.session_id,
            sender=culprit, inbox=inbox)
        return dataclasses.replace(reply, shares=shares, signature=sig)
    return corrupt


def run_federation(n: int, params: SecAggParams, culprit: int, victims: set[int], *, attribute: bool = True,
                   attempts: int = 4):
    """Attempts of one federation round: each runs the members not yet excluded; a proven culprit is
    excluded from the next attempt. Returns (attempts made, result or None, excluded, abort reasons)."""
    ids = list(range(1, n + 1))
    identities, inputs = make_identities(ids), _inputs(ids)
    excluded: dict[int, Fault] = {}
    reasons = []
    for attempt in range(1, attempts + 1):
        members = {c: inputs[c] for c in ids if c not in excluded}
        rnd = SimulatedRound(members, params, round_id=attempt, identities=identities, attribute=attribute)
        try:
            out = rnd.run(corrupt=garbage_from(rnd, culprit, victims), on_client_abort=OnClientAbort.DROP)
        except ProtocolAbort as exc:
            reasons.append(str(exc))
            excluded.update({c: v.fault for c, v in rnd.server.culprits.items()})
            continue
        expected = sum(inputs[c] for c in out.result.survivors)
        assert np.allclose(out.result.values, expected, atol=TOL)
        return attempt, out, excluded, reasons
    return attempts, None, excluded, reasons


COMPLETE_5 = SecAggParams(threshold=4)  # n = 5, t = 4: 2t >= n + c + 1 with one colluder


def test_garbage_shares_to_two_members_name_the_culprit_and_the_round_completes_in_two_attempts():
    attempts, out, excluded, reasons = run_federation(5, COMPLETE_5, culprit=3, victims={1, 2})
    assert out is not None and attempts == 2
    assert excluded == {3: Fault.ACCUSED}  # the culprit, and no honest member
    assert "client 3 sent a share that does not open to client 1" in reasons[0]
    assert out.result.survivors == (1, 2, 4, 5)


def test_control_without_attribution_the_same_member_stalls_every_attempt_unnamed():
    attempts, out, excluded, reasons = run_federation(5, COMPLETE_5, culprit=3, victims={1, 2}, attribute=False)
    assert out is None and attempts == 4
    assert excluded == {}
    assert all("only 3 clients answered stage MASKED_INPUT" in r for r in reasons)


def test_garbage_to_one_member_no_longer_drops_that_member():
    """Issue 17: sent to one member, the round completed but that honest member dropped out every time.
    Now it stays in the sum and only the culprit is left out."""
    params = SecAggParams(threshold=3)  # n = 5, t = 3, complete graph, no colluder assumed
    ids = list(range(1, 6))
    rnd = SimulatedRound(_inputs(ids), params, max_colluders=0)
    out = rnd.run(corrupt=garbage_from(rnd, 4, {2}), on_client_abort=OnClientAbort.DROP)
    assert 2 in out.result.survivors and not out.client_aborts
    assert set(out.server.culprits) == {4} and 4 not in out.result.survivors


def test_sparse_graph_the_culprit_is_named_and_the_attempt_completes_without_it():
    params = SecAggParams(threshold=5, neighbour_degree=6)  # n = 10, m = 7, c = 1: t = 5
    ids = list(range(1, 11))
    rnd = SimulatedRound(_inputs(ids), params)
    rnd.step()  # the graph exists once the keys are in
    culprit = 10
    victim = min(rnd.server.graph.of(culprit))
    corrupt = garbage_from(rnd, culprit, {victim})
    while rnd.next_stage is not None:
        rnd.step(corrupt=corrupt, on_client_abort=OnClientAbort.DROP)
    res = rnd.server.result
    assert set(rnd.server.culprits) == {culprit} and culprit not in res.survivors
    assert victim in res.survivors


def test_a_false_accusation_excludes_the_accuser_and_the_round_still_completes():
    """Member 1 complains about member 2's perfectly good share (revealing its real inbox key): the
    judge finds the share opens, so member 1 is the culprit; its input is refused and the rest sum."""
    ids = list(range(1, 6))
    rnd = SimulatedRound(_inputs(ids), COMPLETE_5)
    kept = {}

    def keep_key(stage, cid, msg):  # the malicious member keeps its inbox key for 2 (an honest one wipes it)
        if stage is Stage.MASKED_INPUT and cid == 1:
            kept["key"] = rnd.clients[1]._inbox[2].private_bytes()
        return msg

    def accuse(stage, cid, reply):
        if stage is not Stage.MASKED_INPUT or cid != 1:
            return reply
        share = next(s for s in rnd.sent[Stage.MASKED_INPUT][1].shares if s.sender == 2)
        c = make_complaint(share, identity=rnd.identities[1], inbox_private=kept["key"], session_id=reply.session_id)
        return dataclasses.replace(reply, complaints=(c,))

    out = rnd.run(tamper=keep_key, corrupt=accuse, on_client_abort=OnClientAbort.DROP)
    assert set(out.server.culprits) == {1} and out.server.culprits[1].fault is Fault.COMPLAINER
    assert "accused client 2 falsely" in out.refused[1]
    assert out.result.survivors == (2, 3, 4, 5)


def test_evidence_is_rechecked_offline_and_cannot_be_bent_against_the_accused():
    ids = list(range(1, 6))
    rnd = SimulatedRound(_inputs(ids), COMPLETE_5)
    with pytest.raises(ProtocolAbort):
        rnd.run(corrupt=garbage_from(rnd, 3, {1, 2}), on_client_abort=OnClientAbort.DROP)
    v = rnd.server.culprits[3]
    record = dict(v.evidence)
    assert rejudge(record) == v and v.fault is Fault.ACCUSED
    # An accuser that swaps in another key, or another ciphertext, convicts itself instead.
    for field, value in (("inbox_private", secrets.token_bytes(32).hex()),
                         ("ciphertext", secrets.token_bytes(len(record["ciphertext"]) // 2).hex())):
        with pytest.raises(CryptoError):  # its own signature covers both: unsigned evidence proves nothing
            rejudge({**record, field: value})
    bent = {**record, "inbox_key": secrets.token_bytes(32).hex()}  # a judge told another committed key
    assert rejudge(bent).fault is Fault.COMPLAINER


def test_the_revealed_key_opens_that_one_share_and_nothing_else():
    ids = list(range(1, 6))
    rnd = SimulatedRound(_inputs(ids), COMPLETE_5)
    with pytest.raises(ProtocolAbort):
        rnd.run(corrupt=garbage_from(rnd, 3, {1, 2}), on_client_abort=OnClientAbort.DROP)
    revealed = bytes.fromhex(rnd.server.culprits[3].evidence["inbox_private"])
    complainer = rnd.server.culprits[3].complainer
    sid = rnd.server.session_id
    keys = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][complainer].keys}
    # Every other share the complainer received, and every share it sent, stays closed to that key.
    delivered = rnd.sent[Stage.MASKED_INPUT][complainer].shares
    sent = rnd.replies[Stage.SHARE_KEYS][complainer].shares
    for s in [s for s in delivered if s.sender != 3] + list(sent):
        other = s.sender if s.receiver == complainer else s.receiver
        key = share_key(revealed, keys[other].c_pk, sid, s.sender, s.receiver)
        with pytest.raises(CryptoError):
            decrypt_share(key, s.ciphertext, session_id=sid, sender=s.sender, receiver=s.receiver)


def test_the_server_cannot_make_an_honest_member_accuse_an_honest_one():
    """A share altered in transit no longer carries its sender's signature: the recipient leaves the
    session (as before) instead of accusing, so a malicious server frames nobody; an unsigned share
    is also refused by an honest server on receipt."""
    ids = list(range(1, 6))
    rnd = SimulatedRound(_inputs(ids), COMPLETE_5)

    def flip(stage, cid, msg):
        if stage is Stage.MASKED_INPUT and cid == 1:
            s = msg.shares[0]
            bad = dataclasses.replace(s, ciphertext=s.ciphertext[:-1] + bytes([s.ciphertext[-1] ^ 1]))
            return dataclasses.replace(msg, shares=(bad,) + msg.shares[1:])
        return msg

    with pytest.raises(ProtocolAbort, match="does not carry its signature"):
        rnd.run(tamper=flip)
    assert rnd.server.culprits == {}
    # The unsigned garbage of a member is refused at the server: it is a dropout, not a culprit.
    rnd2 = SimulatedRound(_inputs(ids), COMPLETE_5)
    out = rnd2.run(corrupt=garbage_from(rnd2, 5, {1}, keep_signature=True), on_client_abort=OnClientAbort.DROP)
    assert "its shares are not signed by it" in out.refused[5] and out.server.culprits == {}


def test_unsigned_evidence_proves_nothing():
    ids = list(range(1, 6))
    rnd = SimulatedRound(_inputs(ids), COMPLETE_5)
    with pytest.raises(ProtocolAbort):
        rnd.run(corrupt=garbage_from(rnd, 3, {1, 2}), on_client_abort=OnClientAbort.DROP)
    record = dict(rnd.server.culprits[3].evidence)
    record["complaint_signature"] = bytes(64).hex()
    with pytest.raises(CryptoError):
        rejudge(record)


def test_a_culprit_already_in_the_sum_stays_in_it_and_is_asked_for_nothing_more():
    """Member 1's masked input arrives before member 4's complaint: it cannot be taken out of the running
    sum, so its self mask is rebuilt from the holders whose shares opened, and it gets no later stage."""
    params = SecAggParams(threshold=3)
    ids = list(range(1, 6))
    inputs = _inputs(ids)
    rnd = SimulatedRound(inputs, params, max_colluders=0)
    out = rnd.run(corrupt=garbage_from(rnd, 1, {4}), on_client_abort=OnClientAbort.DROP)
    assert set(out.server.culprits) == {1} and out.result.survivors == (1, 2, 3, 4, 5)
    assert 1 not in rnd.sent[Stage.CONSISTENCY] and 1 not in rnd.sent[Stage.UNMASK]
    assert out.result.dropouts == {1: Stage.CONSISTENCY}
    assert np.allclose(out.result.values, sum(inputs.values()), atol=TOL)
