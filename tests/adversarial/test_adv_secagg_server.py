"""An actively malicious server against the REAL secure-aggregation clients.

The clients are ``securefed.secagg.SecAggClient`` state machines driven through the in-memory driver
(``SimulatedRound``); the server is either the real ``SecAggServer`` with a tampering hook on what it
sends, or this file playing the server by hand (forging whatever a server can forge: everything except
the clients' signatures and AEAD ciphertexts). Each test asserts the *outcome* an attacker cares about:
what it collected, and that it cannot unmask any individual input from it. ``AttackerView`` is that
attacker: it tries to rebuild every client's self-mask seed and mask key from the shares it collected,
and ``test_the_attacker_harness_unmasks_an_individual_input_given_both_secrets`` shows it succeeds when
a client's two secrets are both exposed, so the negative results below are not vacuous.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from securefed.crypto.fixedpoint import decode_sum
from securefed.crypto.keys import AgreementKeyPair, IdentityKeyPair
from securefed.crypto.prg import add_mask_
from securefed.crypto.shamir import PRIME, Share, combine
from securefed.errors import CryptoError, InvalidMessage, ProtocolAbort
from securefed.secagg import (
    AdvertisedKeys,
    ClientStage,
    CohortMember,
    KeyBroadcast,
    OnClientAbort,
    RoundSetup,
    SecAggClient,
    SecAggParams,
    ServerStage,
    ShareDelivery,
    ShareKind,
    SignedSurvivors,
    SimulatedRound,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    make_identities,
    simulate_round,
)
from securefed.secagg.client import pairwise_mask_key, self_mask_key, setup_digest
from securefed.secagg.session import advertise_payload, session_id

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

D = 8
COMPLETE = SecAggParams(threshold=3, frac_bits=8)  # n = 5: every client holds shares of every other
SPARSE = SecAggParams(threshold=3, neighbour_degree=4, frac_bits=8)  # n = 8: 4 neighbours + self hold shares


def inputs_for(n: int) -> dict[int, np.ndarray]:
    # Distinct, recognisable per-client vectors (not secret: test data).
    return {c: np.linspace(-1, 1, D) * (c / (n + 1)) + 0.01 * c for c in range(1, n + 1)}


def advance(rnd: SimulatedRound, until: Stage, **kw) -> None:
    """Run honest stages until the server's messages of ``until`` are in the outbox (undelivered)."""
    while rnd.next_stage is not until:
        rnd.step(**kw)


# ---- the attacker ------------------------------------------------------------------------------


@dataclasses.dataclass
class AttackerView:
    """Everything a malicious server collected, and what it can rebuild from it."""

    t: int
    keys: dict[int, AdvertisedKeys]
    responses: list[UnmaskResponse] = dataclasses.field(default_factory=list)

    def shares(self, owner: int, kind: ShareKind) -> list[Share]:
        out = []
        for r in self.responses:
            for rs in (r.self_mask_shares if kind is ShareKind.SELF_MASK else r.key_shares):
                if rs.owner == owner:
                    out.append(Share.from_bytes(rs.share))
        return out

    def rebuild(self, owner: int, kind: ShareKind) -> bytes | None:
        """The secret if the collected shares determine it (a key share must match the advertised key)."""
        shares = self.shares(owner, kind)
        try:
            secret = combine(shares, self.t, 32)
        except CryptoError:
            return None
        if kind is ShareKind.MASK_KEY and AgreementKeyPair.from_private_bytes(secret).public_bytes() != self.keys[owner].s_pk:
            return None
        return secret

    def exposed(self, owner: int) -> bool:
        """Both secrets of ``owner`` rebuilt: its individual masked input can be unmasked."""
        return self.rebuild(owner, ShareKind.SELF_MASK) is not None and self.rebuild(owner, ShareKind.MASK_KEY) is not None


def unmask_individual(masked: np.ndarray, *, owner: int, b_seed: bytes, s_sk: bytes, neighbours, keys, sid: bytes,
                      params: SecAggParams) -> np.ndarray:
    """What a server holding both secrets of ``owner`` does: strip every mask from y_owner."""
    acc = masked.copy()
    add_mask_(acc, self_mask_key(b_seed, sid, owner), -1)
    for v in sorted(neighbours):
        add_mask_(acc, pairwise_mask_key(s_sk, keys[v].s_pk, sid, owner, v), -1 if v > owner else +1)
    return decode_sum(acc, params.fixed_point(), 1)


def test_the_attacker_harness_unmasks_an_individual_input_given_both_secrets():
    # Control: take both share kinds of client 4 straight from the clients' memory (what a client
    # that revealed both would send) and check the harness recovers x_4 from y_4 alone.
    inputs = inputs_for(5)
    rnd = SimulatedRound(inputs, COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.UNMASK)
    sid = rnd.server.session_id
    keys = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][1].keys}
    y4 = rnd.replies[Stage.MASKED_INPUT][4].masked
    b_shares, s_shares = [], []
    for c, client in rnd.clients.items():
        b, s = client._own_shares if c == 4 else client._held[4]
        b_shares.append(b)
        s_shares.append(s)
    b_seed, s_sk = combine(b_shares[:3], 3), combine(s_shares[:3], 3)
    x4 = unmask_individual(y4, owner=4, b_seed=b_seed, s_sk=s_sk, neighbours=set(keys) - {4}, keys=keys, sid=sid,
                           params=COMPLETE)
    assert np.allclose(x4, inputs[4], atol=2 ** -7)
    # ... and with either secret alone the result is noise.
    wrong = unmask_individual(y4, owner=4, b_seed=bytes(32), s_sk=s_sk, neighbours=set(keys) - {4}, keys=keys,
                              sid=sid, params=COMPLETE)
    assert not np.allclose(wrong, inputs[4], atol=1.0)


# ---- "both alive and dropped" / "both shares of one client" ---------------------------------------


@pytest.mark.parametrize("victim", [1, 3, 5])
def test_both_alive_and_dropped_reveals_neither(victim):
    """The server lists ``victim`` as a survivor AND as dropped (asking for its self-mask seed and its
    mask key at once): every client aborts and reveals nothing at all."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.UNMASK)
    view = AttackerView(COMPLETE.threshold, {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][1].keys})
    for cid, request in rnd.outbox.items():
        forged = dataclasses.replace(request, dropped=tuple(sorted({*request.dropped, victim})))
        with pytest.raises(ProtocolAbort, match="both as survivor and as dropped"):
            view.responses.append(rnd.clients[cid].handle(forged))
        assert rnd.clients[cid].stage is ClientStage.ABORTED
        assert rnd.clients[cid].revealed == {}
    assert view.responses == []
    assert not any(view.exposed(c) for c in rnd.clients)


def test_a_second_request_for_the_other_share_of_a_client_is_refused():
    """The server first collects self-mask shares honestly, then asks each client again with one
    survivor re-labelled as dropped (to get its mask key too): refused, nothing more revealed."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.UNMASK)
    view = AttackerView(COMPLETE.threshold, {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][1].keys})
    for cid, request in rnd.outbox.items():
        view.responses.append(rnd.clients[cid].handle(request))
    before = {cid: c.revealed for cid, c in rnd.clients.items()}
    for cid, request in rnd.outbox.items():
        second = dataclasses.replace(request, survivors=tuple(c for c in request.survivors if c != 2), dropped=(2,))
        with pytest.raises(ProtocolAbort):
            rnd.clients[cid].handle(second)
        assert rnd.clients[cid].revealed == before[cid]
        assert all(kind is ShareKind.SELF_MASK for kind in before[cid].values())
    # The attacker rebuilt every self-mask seed (that is the protocol) but no mask key: nobody is exposed.
    assert all(view.rebuild(c, ShareKind.SELF_MASK) is not None for c in rnd.clients)
    assert not any(view.exposed(c) for c in rnd.clients)


# ---- split views of the survivor list (the consistency round) --------------------------------------


def _split_view_attack(params: SecAggParams, n: int, victim: int, group_b: frozenset[int]) -> AttackerView:
    """Group A is shown the true survivor list (victim alive -> they would reveal b_victim); group B a
    list without the victim (victim 'dropped' -> they would reveal s_sk_victim). The server forwards to
    each client exactly the consistency signatures that verify for that client's list."""
    rnd = SimulatedRound(inputs_for(n), params, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.CONSISTENCY)
    view = AttackerView(params.threshold, {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][1].keys})
    true_list = rnd.outbox[1].survivors
    fake_list = tuple(c for c in true_list if c != victim)
    shown = {c: (fake_list if c in group_b else true_list) for c in rnd.outbox}
    sigs: dict[tuple[int, ...], list[SignedSurvivors]] = {true_list: [], fake_list: []}
    for c, msg in sorted(rnd.outbox.items()):
        try:
            reply = rnd.clients[c].handle(dataclasses.replace(msg, survivors=shown[c]))
        except ProtocolAbort:
            continue  # the victim refuses a list that omits itself
        sigs[shown[c]].append(SignedSurvivors(c, reply.signature))
    for c in sorted(rnd.clients):
        if rnd.clients[c].stage is not ClientStage.AWAIT_UNMASK:
            continue
        lst = shown[c]
        dropped = tuple(sorted(set(true_list) - set(lst)))
        request = UnmaskRequest(rnd.server.session_id, Stage.UNMASK, lst, dropped, tuple(sigs[lst]))
        try:
            view.responses.append(rnd.clients[c].handle(request))
        except ProtocolAbort:
            assert rnd.clients[c].revealed == {}
    return view


def test_split_survivor_views_never_expose_a_client_complete_graph():
    victim, n = 5, 5
    others = [c for c in range(1, n + 1) if c != victim]
    reached = set()
    for size in range(len(others) + 1):
        for group_b in itertools.combinations(others, size):
            view = _split_view_attack(COMPLETE, n, victim, frozenset(group_b))
            assert not any(view.exposed(c) for c in range(1, n + 1)), f"group B = {group_b}"
            reached |= {kind for kind in ShareKind if view.rebuild(victim, kind) is not None}
    # Each half of the attack succeeds for some split (so the check above is not vacuous) ...
    assert reached == {ShareKind.SELF_MASK, ShareKind.MASK_KEY}


def test_split_survivor_views_never_expose_a_client_sparse_graph():
    n, victim = 8, 1
    others = [c for c in range(1, n + 1) if c != victim]
    reached = set()
    # Every split of the other seven clients (the fake list needs signers beyond the victim's
    # holders too: each revealing client checks t signatures among the holders of every owner).
    for size in range(len(others) + 1):
        for group_b in itertools.combinations(others, size):
            view = _split_view_attack(SPARSE, n, victim, frozenset(group_b))
            assert not any(view.exposed(c) for c in range(1, n + 1)), f"group B = {group_b}"
            reached |= {kind for kind in ShareKind if view.rebuild(victim, kind) is not None}
    assert reached == {ShareKind.SELF_MASK, ShareKind.MASK_KEY}


# ---- dropping honest clients so that fewer than t survive --------------------------------------------


def test_survivor_list_below_threshold_is_refused_and_reveals_nothing():
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.CONSISTENCY)
    for cid, msg in rnd.outbox.items():
        if cid in (1, 2):
            with pytest.raises(ProtocolAbort, match="fewer than the threshold"):
                rnd.clients[cid].handle(dataclasses.replace(msg, survivors=(1, 2)))
            assert rnd.clients[cid].revealed == {}


def test_dropping_honest_clients_after_masked_input_leaves_the_server_unable_to_unmask():
    """All five masked inputs arrived; the server then 'loses' three clients so only two (< t = 3)
    send unmask shares. The honest server aborts; a malicious one that tries anyway cannot rebuild any
    self-mask seed from two shares, and its best guess does not give the sum."""
    inputs = inputs_for(5)
    rnd = SimulatedRound(inputs, COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.UNMASK)
    masked = {c: m.masked for c, m in rnd.replies[Stage.MASKED_INPUT].items()}
    keys = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][1].keys}
    view = AttackerView(COMPLETE.threshold, keys)
    for cid in (1, 2):
        response = rnd.clients[cid].handle(rnd.outbox[cid])
        view.responses.append(response)
        rnd.server.receive(response)
    with pytest.raises(ProtocolAbort, match="fewer than the threshold"):
        rnd.server.close_stage()
    assert rnd.server.stage is ServerStage.ABORTED
    with pytest.raises(ProtocolAbort, match="no aggregate"):
        rnd.server.result  # noqa: B018 - the property raises
    # Shamir refuses fewer than t shares ...
    for c in range(1, 6):
        assert len(view.shares(c, ShareKind.SELF_MASK)) == 2
        assert view.rebuild(c, ShareKind.SELF_MASK) is None
    # ... and interpolating the degree-1 line through two shares anyway gives the wrong seeds.
    total = np.zeros(D, dtype=np.uint32)
    for y in masked.values():
        total += y
    sid = rnd.server.session_id
    for c in range(1, 6):
        (s1, s2) = view.shares(c, ShareKind.SELF_MASK)
        line_at_0 = (s1.y * s2.x - s2.y * s1.x) * pow(s2.x - s1.x, -1, PRIME) % PRIME
        guess = (line_at_0 % 2**256).to_bytes(32, "big")
        add_mask_(total, self_mask_key(guess, sid, c), -1)
    attempt = decode_sum(total, COMPLETE.fixed_point(), 5)
    assert not np.allclose(attempt, sum(inputs.values()), atol=1.0)


# ---- different views of the plan, the model or the key set (Pasquini et al. 2022) ---------------------


@pytest.mark.parametrize("field, value", [("model_hash", b"\x66" * 32), ("plan", b"another-plan"), ("round_id", 99)])
def test_a_different_plan_or_model_for_one_victim_cannot_be_used(field, value):
    """The victim is shown another global adapter hash / plan / round. Its plan digest differs, so
    (a) the honest server refuses its keys and it never contributes, and (b) a server that forwards its
    keys anyway is caught by every other client (its signature covers its digest, not theirs)."""
    inputs = inputs_for(5)
    victim = 3

    def fork(stage, cid, msg):
        if stage is Stage.ADVERTISE_KEYS and cid == victim:
            forked = dataclasses.replace(msg, **{field: value})
            return dataclasses.replace(forked, session_id=setup_digest(forked))
        return msg

    out = simulate_round(inputs, COMPLETE, tamper=fork, max_colluders=NO_COLLUDERS)
    assert victim in out.refused and "another session" in out.refused[victim]
    assert out.result.survivors == (1, 2, 4, 5)
    assert np.allclose(out.result.values, sum(inputs[c] for c in (1, 2, 4, 5)), atol=5 * 2 ** -8)
    assert out.clients[victim].stats is None  # it never masked an input

    # (b) forwarding the victim's keys: build the broadcast the way a cheating server would.
    rnd = SimulatedRound(inputs, COMPLETE, max_colluders=NO_COLLUDERS)
    adverts = {}
    for cid, msg in rnd.outbox.items():
        adverts[cid] = rnd.clients[cid].handle(fork(Stage.ADVERTISE_KEYS, cid, msg))
    keys = tuple(adverts[c].keys() for c in sorted(adverts))
    honest_digest = rnd.server.plan_digest
    for cid, client in rnd.clients.items():
        digest = adverts[cid].session_id
        broadcast = KeyBroadcast(session_id(digest, keys), Stage.SHARE_KEYS, keys)
        with pytest.raises(ProtocolAbort, match="key signature does not verify"):
            client.handle(broadcast)
        assert client.stats is None
    assert adverts[victim].session_id != honest_digest


def test_a_different_key_set_for_one_victim_splits_the_session_and_aborts():
    """The victim is shown the key broadcast without client 2 (with the matching session id, so it
    accepts). Its session id then differs from everyone else's: its encrypted shares fail to
    decrypt at every other client and the honest server refuses its messages."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    rnd.step()
    victim, hidden = 1, 2
    real = rnd.outbox[victim]
    subset = tuple(k for k in real.keys if k.client_id != hidden)
    inbox = tuple(k for k in real.inbox_keys if k.owner != hidden)
    fake = KeyBroadcast(session_id(rnd.server.plan_digest, subset), Stage.SHARE_KEYS, subset, inbox)
    victim_reply = rnd.clients[victim].handle(fake)
    assert victim_reply.session_id != real.session_id
    with pytest.raises(InvalidMessage, match="another session"):
        rnd.server.receive(victim_reply)
    replies = {c: rnd.clients[c].handle(rnd.outbox[c]) for c in (2, 3, 4, 5)}
    for c, reply in replies.items():
        rnd.server.receive(reply)
    # A server relaying the victim's shares anyway (relabelled to the real session):
    for c in (3, 4, 5):
        mine = [s for s in victim_reply.shares if s.receiver == c]
        others = [s for r in replies.values() for s in r.shares if s.receiver == c]
        delivery = ShareDelivery(real.session_id, Stage.MASKED_INPUT, c, tuple(mine + others))
        # The victim signed its shares for its own session id: they carry no valid signature here.
        with pytest.raises(ProtocolAbort, match="does not carry its signature"):
            rnd.clients[c].handle(delivery)
        assert rnd.clients[c].stats is None  # aborted before masking anything


def test_survivor_lists_that_differ_between_clients_get_no_aggregate():
    """The honest server's own check: a consistency signature over another list is refused, so with
    three clients shown a different list the round has too few signatures and aborts."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.CONSISTENCY)
    for cid, msg in sorted(rnd.outbox.items()):
        shown = dataclasses.replace(msg, survivors=(1, 2, 3, 4)) if cid in (1, 2, 3) else msg
        reply = rnd.clients[cid].handle(shown)
        if cid in (1, 2, 3):
            with pytest.raises(InvalidMessage, match="does not verify"):
                rnd.server.receive(reply)
        else:
            rnd.server.receive(reply)
    with pytest.raises(ProtocolAbort, match="fewer than the threshold"):
        rnd.server.close_stage()


# ---- replay -----------------------------------------------------------------------------------------


def _pinned_round(identities, round_id: int) -> SimulatedRound:
    return SimulatedRound(inputs_for(5), COMPLETE, round_id=round_id, identities=identities,
                          plan=f"plan-for-round-{round_id}".encode(), max_colluders=NO_COLLUDERS)


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK])
def test_replay_of_a_message_from_an_earlier_round_aborts(stage):
    identities = make_identities(range(1, 6))
    old = _pinned_round(identities, 1)
    old.run()
    new = _pinned_round(identities, 2)
    advance(new, stage)
    for cid, client in new.clients.items():
        with pytest.raises(ProtocolAbort):
            client.handle(old.sent[stage][cid])
        assert client.revealed == {}
        if stage <= Stage.MASKED_INPUT:
            assert client.stats is None  # aborted before masking its input


def test_replay_of_an_earlier_rounds_setup_is_refused_by_a_client_that_pins_its_plan():
    identities = make_identities(range(1, 6))
    old = _pinned_round(identities, 1)
    old.run()
    expected_plan = b"plan-for-round-2"

    def accept(setup: RoundSetup) -> None:  # what the daemon does: pin the plan it accepted
        if setup.plan != expected_plan or setup.round_id != 2:
            raise ProtocolAbort("round setup does not match the plan this client accepted")

    client = SecAggClient(1, identities[1], accept_setup=accept, max_colluders=NO_COLLUDERS)
    with pytest.raises(ProtocolAbort, match="does not match the plan"):
        client.handle(old.sent[Stage.ADVERTISE_KEYS][1])
    assert client.stage is ClientStage.ABORTED


def test_client_messages_replayed_from_an_earlier_round_are_refused_by_the_server():
    identities = make_identities(range(1, 6))
    old = _pinned_round(identities, 1)
    old.run()
    new = _pinned_round(identities, 2)
    for stage in Stage:
        for cid, reply in old.replies[stage].items():
            with pytest.raises(InvalidMessage):
                new.server.receive(reply)
        new.step()
    assert new.server.stage is ServerStage.DONE
    assert np.allclose(new.server.result.values, sum(inputs_for(5).values()), atol=5 * 2 ** -8)


@pytest.mark.parametrize("replayed", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY])
def test_replay_of_an_earlier_stage_in_the_same_round_aborts(replayed):
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage(replayed + 1))
    for cid, client in rnd.clients.items():
        with pytest.raises(ProtocolAbort):
            client.handle(rnd.sent[replayed][cid])
        assert client.revealed == {}


def test_a_finished_client_answers_nothing_more():
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    rnd.run()
    for cid, client in rnd.clients.items():
        revealed = client.revealed
        with pytest.raises(ProtocolAbort, match="session is over"):
            client.handle(rnd.sent[Stage.UNMASK][cid])
        assert client.revealed == revealed


# ---- late and tampered messages ------------------------------------------------------------------------


def test_a_late_masked_input_from_a_dropped_client_is_not_counted():
    inputs = inputs_for(5)
    rnd = SimulatedRound(inputs, COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.MASKED_INPUT)
    late = rnd.clients[4].handle(rnd.outbox[4])
    rnd.step(drop={4: Stage.MASKED_INPUT})
    assert rnd.server.dropouts == {4: Stage.MASKED_INPUT}
    with pytest.raises(InvalidMessage):
        rnd.server.receive(late)
    # The same bytes relabelled as another (surviving) client's second answer are refused too.
    with pytest.raises(InvalidMessage):
        rnd.server.receive(dataclasses.replace(late, client_id=1))
    rnd.run()
    result = rnd.server.result
    assert result.survivors == (1, 2, 3, 5)
    assert np.allclose(result.values, sum(inputs[c] for c in (1, 2, 3, 5)), atol=4 * 2 ** -8)
    assert not np.allclose(result.values, sum(inputs.values()), atol=0.05)
    # The late client's mask key was rebuilt (it dropped after sharing); its self-mask was not.
    assert all(rnd.clients[c].revealed[4] is ShareKind.MASK_KEY for c in (1, 2, 3, 5))


@pytest.mark.parametrize("attack", ["flip-byte", "re-route", "swap-sender", "truncate"])
def test_a_tampered_or_rerouted_share_aborts_the_victim_and_the_rest_sum_exactly(attack):
    inputs = inputs_for(5)
    rnd = SimulatedRound(inputs, COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.MASKED_INPUT)
    victim = 3
    all_shares = [s for r in rnd.replies[Stage.SHARE_KEYS].values() for s in r.shares]
    delivery = rnd.outbox[victim]
    shares = list(delivery.shares)
    first = shares[0]
    if attack == "flip-byte":
        ct = bytearray(first.ciphertext)
        ct[len(ct) // 2] ^= 0x20
        shares[0] = dataclasses.replace(first, ciphertext=bytes(ct))
    elif attack == "re-route":
        # the share client `first.sender` encrypted for someone else, relabelled as addressed to the victim
        other = next(s for s in all_shares if s.sender == first.sender and s.receiver != victim)
        shares[0] = dataclasses.replace(other, receiver=victim)
    elif attack == "swap-sender":
        second = shares[1]
        shares[0] = dataclasses.replace(first, ciphertext=second.ciphertext)
    else:
        shares[0] = dataclasses.replace(first, ciphertext=first.ciphertext[:20])
    rnd.outbox[victim] = dataclasses.replace(delivery, shares=tuple(shares))
    out = rnd.run(on_client_abort=OnClientAbort.DROP)
    assert set(out.client_aborts) == {victim}
    assert out.clients[victim].stats is None and out.clients[victim].revealed == {}
    assert out.result.survivors == (1, 2, 4, 5)
    assert np.allclose(out.result.values, sum(inputs[c] for c in (1, 2, 4, 5)), atol=4 * 2 ** -8)


def test_a_share_delivery_naming_a_non_neighbour_sender_aborts_sparse_graph():
    rnd = SimulatedRound(inputs_for(8), SPARSE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.MASKED_INPUT)
    victim = 1
    stranger = next(c for c in range(2, 9) if c not in rnd.server.graph.of(victim))
    delivery = rnd.outbox[victim]
    forged = dataclasses.replace(delivery.shares[0], sender=stranger)
    with pytest.raises(ProtocolAbort, match="not a neighbour"):
        rnd.clients[victim].handle(dataclasses.replace(delivery, shares=(forged, *delivery.shares[1:])))


# ---- cohort padding, duplicate and uncertified identities -------------------------------------------


def _setup_with_cohort(rnd: SimulatedRound, cohort) -> RoundSetup:
    base = rnd.outbox[1]
    forged = dataclasses.replace(base, cohort=tuple(cohort))
    return dataclasses.replace(forged, session_id=setup_digest(forged))


def test_a_cohort_padded_with_a_duplicate_identity_aborts():
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    base = rnd.outbox[1].cohort
    # A sixth "member" that re-uses client 2's identity key (one party counted twice).
    padded = (*base, CohortMember(6, base[1].identity_key))
    for cid, client in rnd.clients.items():
        with pytest.raises(ProtocolAbort, match="share an identity key"):
            client.handle(_setup_with_cohort(rnd, padded))


def test_a_cohort_listing_one_client_twice_or_with_another_key_aborts():
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    base = rnd.outbox[1].cohort
    twice = (*base[:2], base[1], *base[2:])
    with pytest.raises(ProtocolAbort, match="malformed RoundSetup"):
        rnd.clients[1].handle(_setup_with_cohort(rnd, twice))
    rekeyed = (CohortMember(1, IdentityKeyPair.generate().public_bytes()), *base[1:])
    with pytest.raises(ProtocolAbort, match="another identity key for this client"):
        SecAggClient(1, rnd.identities[1], max_colluders=NO_COLLUDERS).handle(_setup_with_cohort(rnd, rekeyed))


def test_keys_signed_by_an_uncertified_identity_abort_the_round():
    """The server injects round keys for a cohort member, signed with a key that is not the member's
    identity (it does not hold the member's private key)."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    rnd.step()
    impostor = IdentityKeyPair.generate()
    fake_c, fake_s = AgreementKeyPair.generate(), AgreementKeyPair.generate()
    digest = rnd.server.plan_digest
    sig = impostor.sign(advertise_payload(digest, 2, fake_c.public_bytes(), fake_s.public_bytes(), bytes(32)))
    keys = tuple(AdvertisedKeys(2, fake_c.public_bytes(), fake_s.public_bytes(), sig) if k.client_id == 2 else k
                 for k in rnd.outbox[1].keys)
    broadcast = KeyBroadcast(session_id(digest, keys), Stage.SHARE_KEYS, keys)
    for cid in (1, 3, 4, 5):
        with pytest.raises(ProtocolAbort, match="key signature does not verify"):
            rnd.clients[cid].handle(broadcast)


def test_duplicate_round_keys_across_clients_abort_the_round():
    """Client 3's keys replaced by client 4's (a copy, with 4's valid signature under 4's id would not
    verify for 3; here the server also copies 4's entry wholesale under id 3): refused either way."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    rnd.step()
    k4 = next(k for k in rnd.outbox[1].keys if k.client_id == 4)
    keys = tuple(dataclasses.replace(k4, client_id=3) if k.client_id == 3 else k for k in rnd.outbox[1].keys)
    broadcast = KeyBroadcast(session_id(rnd.server.plan_digest, keys), Stage.SHARE_KEYS, keys)
    for cid in (1, 2, 5):
        with pytest.raises(ProtocolAbort, match="duplicate public keys|key signature does not verify"):
            rnd.clients[cid].handle(broadcast)


def test_sybils_holding_cohort_identities_learn_the_victims_input_so_cohort_keys_must_be_certified():
    """NOT DEFENDED by the state machines, by design: if the server controls the identity keys of
    n - 1 cohort members (Sybils), secure aggregation gives it the victim's input exactly. The only
    defence is that every cohort identity key is bound by the federation CA and checked by each
    client before it joins (see threat_models/secure_aggregation.md, "Not defended")."""
    inputs = inputs_for(5)
    out = simulate_round(inputs, COMPLETE, max_colluders=NO_COLLUDERS)  # every "client" but 1 is played by the server
    sybil_sum = sum(inputs[c] for c in (2, 3, 4, 5))
    assert np.allclose(out.result.values - sybil_sum, inputs[1], atol=5 * 2 ** -8)


def test_a_restarted_client_answers_no_unmask_request_for_a_round_it_lost():
    """Round secrets live only in memory: after a crash and restart, the client has a fresh state
    machine, and a server replaying the lost round's later messages gets nothing from it."""
    rnd = SimulatedRound(inputs_for(5), COMPLETE, max_colluders=NO_COLLUDERS)
    advance(rnd, Stage.UNMASK)
    restarted = SecAggClient(3, rnd.identities[3], max_colluders=NO_COLLUDERS)
    for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK):
        with pytest.raises(ProtocolAbort):
            SecAggClient(3, rnd.identities[3], max_colluders=NO_COLLUDERS).handle(rnd.sent[stage][3] if stage in rnd.sent else rnd.outbox[3])
    with pytest.raises(ProtocolAbort):
        restarted.handle(rnd.outbox[3])
    assert restarted.revealed == {} and restarted.stage is ClientStage.ABORTED
