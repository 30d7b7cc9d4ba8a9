"""An active server WITH colluding members, against the real ``SecAggClient`` state machines.

Attack 1 (issue 10 §1): the server splits the honest share holders of a victim into two groups and
shows each another survivor list (victim alive to group A, dropped to group B). A colluding member
signs *both* lists and hands over its own shares of both kinds, so each group sees t valid signatures
and the server rebuilds the victim's self-mask seed (from A) and its mask key (from B), then strips
every mask from the victim's masked input. The defence is the colluder bound 2t >= m + c + 1, which
each member checks for its own ``max_colluders`` (members assuming 0 colluders, the old strict-majority
rule, are the negative control: the victim's input is recovered).

Attack 2 (withheld shares): the server withholds honest members' encrypted shares from the victim
only, so the victim masks with the colluder and one member the server then lists as dropped; everyone
is shown one consistent survivor list. The defence is in the consistency round: every survivor signs
whom it masked with, and a holder reveals nothing unless each surviving neighbour masked with it. A
test-only client class that applies the old survivor checks is the negative control.

``recover`` is the attacker: it strips the masks with the secrets it collected and compares against the
victim's plaintext input, so each negative control shows the attack really succeeds.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from securefed.crypto.fixedpoint import decode_sum
from securefed.crypto.keys import AgreementKeyPair
from securefed.crypto.prg import add_mask_
from securefed.crypto.shamir import Share, combine
from securefed.errors import CryptoError, ProtocolAbort
from securefed.secagg import (
    ClientStage,
    MaskedWith,
    SecAggClient,
    SecAggParams,
    ShareDelivery,
    SignedSurvivors,
    SimulatedRound,
    Stage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
    required_threshold,
)
from securefed.secagg.client import pairwise_mask_key, self_mask_key
from securefed.secagg.session import consistency_payload

D = 16
FRAC = 10


def inputs_for(n: int) -> dict[int, np.ndarray]:
    # Distinct, recognisable per-client vectors (test data, not secret).
    return {c: np.linspace(-0.9, 0.9, D) * ((c % 7) + 1) / 8 + 0.01 * c for c in range(1, n + 1)}


def advance(rnd: SimulatedRound, until: Stage) -> None:
    while rnd.next_stage is not until:
        rnd.step()


def strip_masks(y: np.ndarray, *, owner: int, b_seed: bytes, partner_keys: dict[int, bytes], sid: bytes,
                params: SecAggParams) -> np.ndarray:
    """What the server does with the victim's secrets: y - PRG(b) -/+ PRG(s_uv) for each partner v."""
    acc = y.copy()
    add_mask_(acc, self_mask_key(b_seed, sid, owner), -1)
    for v, key in sorted(partner_keys.items()):
        add_mask_(acc, key, -1 if v > owner else +1)  # the owner added +PRG(s_uv) for v > u
    return decode_sum(acc, params.fixed_point(), 1)


def rebuild(shares: list[Share], t: int) -> bytes | None:
    try:
        return combine(shares, t, 32)
    except CryptoError:
        return None


# ---- attack 1: one colluder signs two survivor lists ---------------------------------------------------


def holders_reveal(graph, t: int, member: int, signers: set[int]) -> bool:
    """Whether an honest member shown a list signed by ``signers`` passes its per-owner signature check."""
    return all(len(signers & set(graph.holders(o))) >= t for o in graph.of(member) | {member})


def find_split(graph, t: int, victim: int, colluders: frozenset[int], honest: list[int]) -> frozenset[int] | None:
    """A group B (shown the victim dropped) for which both halves of the attack gather t shares, or None.

    Exhaustive over the honest members outside the victim: the victim is always in group A (it refuses
    a list without itself)."""
    holders_v = set(graph.holders(victim))
    for size in range(len(honest) + 1):
        for group_b in itertools.combinations(honest, size):
            b_set = set(group_b)
            a_signers = (set(honest) - b_set) | {victim} | set(colluders)
            b_signers = b_set | set(colluders)
            b_shares = {x for x in a_signers - set(colluders) if holders_reveal(graph, t, x, a_signers)} & holders_v
            s_shares = {x for x in b_set if holders_reveal(graph, t, x, b_signers)} & holders_v
            c_v = len(holders_v & set(colluders))
            if len(b_shares) + c_v >= t and len(s_shares) + c_v >= t:
                return frozenset(group_b)
    return None


def split_list_attack(rnd: SimulatedRound, victim: int, colluders: frozenset[int],
                      group_b: frozenset[int]) -> np.ndarray | None:
    """Run attack 1 from the consistency round on; the victim's input if the server can unmask it."""
    params, t = rnd.server.params, rnd.server.params.threshold
    sid, graph = rnd.server.session_id, rnd.server.graph
    first = next(iter(rnd.outbox.values()))
    u2, true_list = first.share_senders, first.survivors
    fake_list = tuple(c for c in true_list if c != victim)
    shown = {c: (fake_list if c in group_b else true_list) for c in true_list if c not in colluders}
    sigs: dict[tuple[int, ...], list[SignedSurvivors]] = {true_list: [], fake_list: []}
    for z in colluders:  # the colluders sign both lists
        for lst in (true_list, fake_list):
            sigs[lst].append(SignedSurvivors(z, rnd.identities[z].sign(consistency_payload(sid, u2, lst))))
    for c, lst in sorted(shown.items()):
        try:
            reply = rnd.clients[c].handle(dataclasses.replace(rnd.outbox[c], survivors=lst))
        except ProtocolAbort:
            continue
        sigs[lst].append(SignedSurvivors(c, reply.signature))
    responses: list[UnmaskResponse] = []
    for c, lst in sorted(shown.items()):
        if rnd.clients[c].stage is not ClientStage.AWAIT_UNMASK:
            continue
        dropped = tuple(sorted(set(u2) - set(lst)))
        request = UnmaskRequest(sid, Stage.UNMASK, lst, dropped, tuple(sorted(sigs[lst], key=lambda s: s.client_id)))
        try:
            responses.append(rnd.clients[c].handle(request))
        except ProtocolAbort:
            pass
    b_shares = [Share.from_bytes(s.share) for r in responses for s in r.self_mask_shares if s.owner == victim]
    s_shares = [Share.from_bytes(s.share) for r in responses for s in r.key_shares if s.owner == victim]
    for z in colluders:  # ... and hand over their own shares of the victim, both kinds
        if graph.holds(z, victim):
            b, s = rnd.clients[z]._held[victim]
            b_shares.append(b)
            s_shares.append(s)
    b_seed, s_sk = rebuild(b_shares, t), rebuild(s_shares, t)
    keys = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][victim].keys}
    if b_seed is None or s_sk is None or AgreementKeyPair.from_private_bytes(s_sk).public_bytes() != keys[victim].s_pk:
        return None
    partners = {v: pairwise_mask_key(s_sk, keys[v].s_pk, sid, victim, v) for v in set(u2) & graph.of(victim)}
    y = rnd.replies[Stage.MASKED_INPUT][victim].masked
    return strip_masks(y, owner=victim, b_seed=b_seed, partner_keys=partners, sid=sid, params=params)


def _colluders_next_to(rnd: SimulatedRound, victim: int, c: int) -> frozenset[int]:
    graph = rnd.server.graph
    return frozenset(sorted(graph.of(victim))[:c])


CASES = [
    # (n, k, t, c): the reproductions
    pytest.param(5, None, 3, 1, id="complete-n5-t3-one-colluder"),
    pytest.param(10, None, 6, 2, id="server.toml-n10-t6-two-colluders"),
    pytest.param(9, None, 5, 1, id="complete-n9-t5-one-colluder"),
    pytest.param(16, 12, 7, 2, id="secagg+-n16-k12-t7-two-colluding-neighbours"),
    pytest.param(16, 12, 7, 3, id="secagg+-n16-k12-t7-three-colluding-neighbours"),
]


GRAPH_TRIES = 20


@pytest.mark.parametrize(("n", "k", "t", "c"), CASES)
def test_control_members_assuming_no_colluder_expose_the_victim_to_one_signing_two_lists(n, k, t, c):
    """Negative control: with the old rule (members assume 0 colluders) the attack recovers the victim's input."""
    params = SecAggParams(threshold=t, neighbour_degree=k, frac_bits=FRAC)
    inputs = inputs_for(n)
    victim = 1
    # A SecAgg+ graph is random per session; the server retries sessions until one admits the split
    # (as it would: the graph-grinding guard bounds that separately). The complete graph always does.
    for _ in range(GRAPH_TRIES):
        rnd = SimulatedRound(inputs, params, max_colluders=0)
        advance(rnd, Stage.CONSISTENCY)
        colluders = _colluders_next_to(rnd, victim, c)
        honest = sorted(set(inputs) - colluders - {victim})
        group_b = find_split(rnd.server.graph, t, victim, colluders, honest)
        if group_b is not None:
            break
    assert group_b is not None, f"no session of {GRAPH_TRIES} admitted the split"
    got = split_list_attack(rnd, victim, colluders, group_b)
    assert got is not None, "the attack harness failed where it should succeed"
    np.testing.assert_allclose(got, inputs[victim], atol=2.0 ** -(FRAC - 1))  # recovered up to fixed-point rounding


@pytest.mark.parametrize(("n", "k", "t", "c"), CASES)
def test_members_assuming_c_colluders_refuse_the_threshold_before_any_key_leaves(n, k, t, c):
    """The defence: a member with max_colluders = c refuses t < (m + c + 1) / 2 at the round setup (the
    server claimed 0 colluders); nothing of its is ever sent."""
    params = SecAggParams(threshold=t, neighbour_degree=k, frac_bits=FRAC)
    rnd = SimulatedRound(inputs_for(n), params, max_colluders=0)  # the server claims nobody colludes
    setup = rnd.outbox[1]
    m = params.holders_count(n)
    for cid in (1, 2):
        cautious = SecAggClient(cid, rnd.identities[cid], max_colluders=c)
        with pytest.raises(ProtocolAbort, match=f"max_colluding_members = {c}.*threshold >= {required_threshold(m, c)}"):
            cautious.handle(setup)
        assert cautious.stage is ClientStage.ABORTED


@pytest.mark.parametrize(("n", "k", "c"), [(5, None, 1), (10, None, 2), (9, None, 1), (16, 12, 2), (16, 12, 3)])
def test_at_the_bound_no_split_exposes_the_victim(n, k, c):
    """Tightness: t = ceil((m + c + 1) / 2) is accepted by members assuming c, and no split of the honest
    holders gives the server both secrets (exhaustive, then run against the real clients); one less
    (the control above) is exposed."""
    m = n if k is None else k + 1
    t = required_threshold(m, c)
    params = SecAggParams(threshold=t, neighbour_degree=k, frac_bits=FRAC)
    inputs = inputs_for(n)
    rnd = SimulatedRound(inputs, params, max_colluders=c)
    advance(rnd, Stage.CONSISTENCY)
    victim = 1
    colluders = _colluders_next_to(rnd, victim, c)
    honest = sorted(set(inputs) - colluders - {victim})
    assert find_split(rnd.server.graph, t, victim, colluders, honest) is None
    # The most the server can do with real clients: half of the honest holders each way.
    group_b = frozenset(honest[: len(honest) // 2])
    assert split_list_attack(rnd, victim, colluders, group_b) is None


# ---- attack 2: shares withheld from the victim at delivery ----------------------------------------------


class LegacyClient(SecAggClient):
    """TEST ONLY: the survivor checks before this defence (U3 only; nobody's masked-with set is checked)."""

    def _check_survivor_view(self, msg: SurvivorList) -> None:
        me, survivors = self.client_id, set(msg.survivors)
        if me not in survivors or not survivors <= set(self._keys) or len(survivors) < self._t:
            self._abort("legacy survivor check failed")
        if (survivors & self._graph.of(me)) - self._u2_neighbours:
            self._abort("legacy: a survivor never sent this client its shares")


def withheld_share_attack(client_cls: type[SecAggClient]) -> tuple[np.ndarray | None, dict[int, str]]:
    """n = 5, t = 3, complete graph; member 2 colludes. The server delivers to victim 1 only the shares of
    2 (colluder) and 3, so 1 masks with those two; it lists 3 as dropped (it gets s_sk_3 from the
    others) and 4, 5 as survivors, who reveal b_1. Returns the victim's input if recovered, and who aborted."""
    victim, colluder, dropped, withheld = 1, 2, 3, (4, 5)
    params = SecAggParams(threshold=3, frac_bits=FRAC)
    inputs = inputs_for(5)
    rnd = SimulatedRound(inputs, params, max_colluders=0)  # members assume no colluder: the bound does not help
    rnd.clients = {cid: client_cls(cid, rnd.identities[cid], max_colluders=0) for cid in inputs}
    for cid, cl in rnd.clients.items():
        cl.set_input(inputs[cid])
    advance(rnd, Stage.MASKED_INPUT)
    colluder_s_sk = rnd.clients[colluder]._s_key.private_bytes()  # the colluder hands over its mask key
    sid = rnd.server.session_id
    keys = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][victim].keys}
    masked, aborted = {}, {}
    for cid, delivery in sorted(rnd.outbox.items()):
        if cid == victim:
            delivery = ShareDelivery(sid, Stage.MASKED_INPUT, victim,
                                     tuple(s for s in delivery.shares if s.sender not in withheld))
        masked[cid] = rnd.clients[cid].handle(delivery)
    u2 = tuple(sorted(inputs))
    u3 = tuple(c for c in u2 if c != dropped)
    graph = rnd.server.graph
    sigs = [SignedSurvivors(colluder, rnd.identities[colluder].sign(consistency_payload(sid, u2, u3)))]
    for cid in u3:
        if cid == colluder:
            continue
        attested = tuple(MaskedWith(u, masked[u].signature) for u in sorted(set(u3) & graph.of(cid)))
        try:
            reply = rnd.clients[cid].handle(SurvivorList(sid, Stage.CONSISTENCY, u3, u2, attested))
        except ProtocolAbort as exc:
            aborted[cid] = str(exc)
            continue
        sigs.append(SignedSurvivors(cid, reply.signature))
    sigs.sort(key=lambda s: s.client_id)
    request = UnmaskRequest(sid, Stage.UNMASK, u3, (dropped,), tuple(sigs))
    responses = []
    for cid in withheld:
        if rnd.clients[cid].stage is ClientStage.AWAIT_UNMASK:
            responses.append(rnd.clients[cid].handle(request))
    b_shares = [Share.from_bytes(s.share) for r in responses for s in r.self_mask_shares if s.owner == victim]
    s_shares = [Share.from_bytes(s.share) for r in responses for s in r.key_shares if s.owner == dropped]
    cb, cs = rnd.clients[colluder]._held[victim][0], rnd.clients[colluder]._held[dropped][1]
    b_seed, s_sk_dropped = rebuild(b_shares + [cb], 3), rebuild(s_shares + [cs], 3)
    if b_seed is None or s_sk_dropped is None:
        return None, aborted
    # The victim masked with the colluder (its key is known) and with member 3 (its key was rebuilt).
    partners = {colluder: pairwise_mask_key(colluder_s_sk, keys[victim].s_pk, sid, colluder, victim),
                dropped: pairwise_mask_key(s_sk_dropped, keys[victim].s_pk, sid, dropped, victim)}
    got = strip_masks(masked[victim].masked, owner=victim, b_seed=b_seed, partner_keys=partners, sid=sid,
                      params=params)
    return got, aborted


def test_control_withheld_shares_expose_the_victim_when_masked_with_sets_are_not_checked():
    got, aborted = withheld_share_attack(LegacyClient)
    assert got is not None and set(aborted) == {1}  # only the victim noticed (it never signs)
    np.testing.assert_allclose(got, inputs_for(5)[1], atol=2.0 ** -(FRAC - 1))


def test_withheld_shares_abort_the_holders_before_they_reveal_the_victims_self_mask():
    got, aborted = withheld_share_attack(SecAggClient)
    assert got is None
    assert "disagree with the shares this client received" in aborted[1]  # the victim: shares withheld from it
    for holder in (4, 5):  # the holders the server meant to reveal b_1: 1 did not mask with them
        assert "surviving neighbour 1 did not mask with the listed share senders" in aborted[holder]


def test_withheld_shares_with_the_default_colluder_assumption_are_refused_at_setup():
    # With max_colluders = 1 (the default) t = 3 of 5 is refused outright: the bound and the binding are
    # independent defences, each enough against this attack.
    rnd = SimulatedRound(inputs_for(5), SecAggParams(threshold=3, frac_bits=FRAC), max_colluders=0)
    with pytest.raises(ProtocolAbort, match="max_colluding_members = 1"):
        SecAggClient(1, rnd.identities[1]).handle(rnd.outbox[1])


def test_an_honest_round_passes_the_masked_with_checks_with_dropouts_at_every_stage():
    """Control for the binding: honest rounds with members dropping at each stage still sum exactly."""
    params = SecAggParams(threshold=5, frac_bits=FRAC)  # n = 8, c = 1: 2t >= 10, three dropouts tolerated
    inputs = inputs_for(8)
    drop = {6: Stage.SHARE_KEYS, 7: Stage.MASKED_INPUT, 8: Stage.CONSISTENCY}
    rnd = SimulatedRound(inputs, params)
    out = rnd.run(drop=drop)
    assert out.result.survivors == (1, 2, 3, 4, 5, 8)  # 8 sent its masked input, then went silent
    np.testing.assert_allclose(out.result.values, sum(inputs[c] for c in out.result.survivors), atol=6 * 2.0 ** -FRAC)
