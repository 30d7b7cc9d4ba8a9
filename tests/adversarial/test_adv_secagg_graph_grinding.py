"""SecAgg+ graph grinding by a malicious server colluding with a few clients (NOT DEFENDED).

The sparse SecAgg+ graph (Bell et al. 2020) is secure only with high probability *over a random graph
the server cannot bias*: a victim is exposed if t of its share holders collude. Here the graph is a
deterministic function of the session id, and the session id hashes the set U1 of clients whose round
keys the server includes. The server sees every advertised key first and chooses U1 (a client it leaves
out just looks slow), so it can try many graphs offline and pick one that surrounds the victim with its
colluders. This test plays that attack with the real client and server code and shows the victim's
individual input comes out. The complete graph (``neighbour_degree`` unset) is not affected: t is a
strict majority of all n clients there.
"""

from __future__ import annotations

import itertools

import numpy as np
from test_adv_secagg_server import D, advance, inputs_for, unmask_individual

from securefed.crypto.shamir import combine
from securefed.secagg import NeighbourGraph, SecAggParams, SimulatedRound, Stage, session_id

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

N = 10
PARAMS = SecAggParams(threshold=3, neighbour_degree=4, frac_bits=8)  # holders m = 5, t = 3: majority
VICTIM = 1
COLLUDERS = (8, 9, 10)  # 3 = t of the 9 others: a 30% colluding fraction


def _ground_graph(digest: bytes, adverts: dict) -> tuple[frozenset[int], NeighbourGraph] | None:
    """Search U1 = everyone minus up to 3 honest non-victims for a graph where t colluders hold the
    victim's shares. Purely offline: hashing candidate key sets, nothing sent to anyone."""
    droppable = [c for c in adverts if c != VICTIM and c not in COLLUDERS]
    for k in range(4):
        for dropped in itertools.combinations(droppable, k):
            u1 = frozenset(adverts) - set(dropped)
            keys = [adverts[c].keys() for c in sorted(u1)]
            graph = NeighbourGraph.build(session_id(digest, keys), sorted(u1), PARAMS.effective_degree(len(u1)))
            if len(set(COLLUDERS) & set(graph.holders(VICTIM))) >= PARAMS.threshold:
                return u1, graph
    return None


def test_not_defended_a_server_grinding_u1_surrounds_a_victim_with_colluders_in_the_sparse_graph():
    inputs = inputs_for(N)
    attempts = 0
    while True:  # each fresh round gives fresh keys; one round almost always suffices
        attempts += 1
        assert attempts <= 20, "the grinding search failed 20 times in a row"
        rnd = SimulatedRound(inputs, PARAMS, max_colluders=NO_COLLUDERS)
        adverts = {c: rnd.clients[c].handle(msg) for c, msg in rnd.outbox.items()}
        found = _ground_graph(rnd.server.plan_digest, adverts)
        if found is not None:
            break
    u1, graph = found
    # The server includes only U1's keys (the others "missed the deadline") and runs the round honestly.
    for c in sorted(u1):
        rnd.server.receive(adverts[c])
    rnd.outbox = rnd.server.close_stage()
    rnd.next_stage = Stage.SHARE_KEYS
    assert rnd.server.graph == graph
    advance(rnd, Stage.UNMASK)
    y_victim = rnd.replies[Stage.MASKED_INPUT][VICTIM].masked
    # The colluders simply hand over the shares of the victim's secrets they decrypted.
    held = [rnd.clients[c]._held[VICTIM] for c in COLLUDERS]
    b_seed = combine([b for b, _ in held], PARAMS.threshold)
    s_sk = combine([s for _, s in held], PARAMS.threshold)
    keys = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][VICTIM].keys}
    x_victim = unmask_individual(y_victim, owner=VICTIM, b_seed=b_seed, s_sk=s_sk,
                                 neighbours=graph.of(VICTIM), keys=keys, sid=rnd.server.session_id, params=PARAMS)
    assert x_victim.shape == (D,)
    assert np.allclose(x_victim, inputs[VICTIM], atol=2 ** -7)


def test_without_grinding_the_same_colluders_rarely_hold_t_shares_of_the_victim():
    """The odds the grinding beats: over honest random graphs with all ten clients, the three colluders
    are all among the victim's 4 neighbours with probability C(6,1)/C(9,4) = 6/126 ~ 4.8%."""
    hits = 0
    trials = 300
    ids = list(range(1, N + 1))
    for i in range(trials):
        graph = NeighbourGraph.build(i.to_bytes(32, "big"), ids, 4)  # session ids are uniform hashes
        hits += len(set(COLLUDERS) & set(graph.holders(VICTIM))) >= PARAMS.threshold
    assert hits / trials < 0.12


def test_not_defended_aborting_and_retrying_rounds_grinds_the_graph_even_with_every_key_included():
    """The client daemon leaves a sparse round whose key broadcast omits a listed member
    (``sparse_graph_needs_all_keys``), which stops the offline search above. The state machines alone
    still allow online grinding: let the keys come in, look at the graph, and if it does not suit, let
    the round "time out" and start a fresh attempt (fresh keys, fresh graph); about 1/p attempts
    (p ~ 5% here) suffice. The member daemon now caps this (``GraphGrindingGuard``: at most
    ``sparse_graph_max_retries`` unreleased sparse sessions per global adapter), which turns the
    server's unbounded retries into a few draws per round; this test shows what the cap is for."""
    inputs = inputs_for(N)
    for attempt in range(1, 301):
        rnd = SimulatedRound(inputs, PARAMS, round_id=attempt, max_colluders=NO_COLLUDERS)
        adverts = {c: rnd.clients[c].handle(msg) for c, msg in rnd.outbox.items()}
        keys = [adverts[c].keys() for c in sorted(adverts)]  # every member's keys: the guard is satisfied
        graph = NeighbourGraph.build(session_id(rnd.server.plan_digest, keys), sorted(adverts), 4)
        if len(set(COLLUDERS) & set(graph.holders(VICTIM))) >= PARAMS.threshold:
            break
    else:
        raise AssertionError("no favourable graph in 300 attempts")
    for c in sorted(adverts):
        rnd.server.receive(adverts[c])
    rnd.outbox = rnd.server.close_stage()
    rnd.next_stage = Stage.SHARE_KEYS
    assert len(rnd.outbox[VICTIM].keys) == N  # the broadcast lists everyone
    advance(rnd, Stage.UNMASK)
    held = [rnd.clients[c]._held[VICTIM] for c in COLLUDERS]
    keys_by_id = {k.client_id: k for k in rnd.sent[Stage.SHARE_KEYS][VICTIM].keys}
    x_victim = unmask_individual(rnd.replies[Stage.MASKED_INPUT][VICTIM].masked, owner=VICTIM,
                                 b_seed=combine([b for b, _ in held], PARAMS.threshold),
                                 s_sk=combine([s for _, s in held], PARAMS.threshold),
                                 neighbours=rnd.server.graph.of(VICTIM), keys=keys_by_id,
                                 sid=rnd.server.session_id, params=PARAMS)
    assert np.allclose(x_victim, inputs[VICTIM], atol=2 ** -7)
