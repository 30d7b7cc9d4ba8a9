"""What a member remembers against a server that retries (issue 10 §2, §3), on a real member daemon.

* Replayed attempts: the same plan handed again (or an older one) is refused, in the same process and
  after a restart; the control is a member whose state was lost, which trains and releases again.
* Graph grinding: the server lets SecAgg+ sessions die after seeing their graphs and nudges the global
  adapter by one ulp each time (a fresh digest). The member joins ``sparse_graph_max_retries`` of them,
  also across a restart, and also when the server announces a made-up completed round between the
  sessions (issue 17: that used to reset the count, 6 of 6 sessions joined); the controls are the old
  guards, keyed by the adapter digest or by the announced round (values the server picks), which join
  every one. A session the member finishes itself starts the count afresh (tests/client).
* CKKS: one confirmed contributor set per attempt, across sessions and restarts; the control is a member
  whose state was lost, which confirms a second set (the server could then difference the two sums).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from member_harness import Federation, offer, run

from securefed import he
from securefed.client.ckks_session import CkksSession, MemberKey, make_contribution
from securefed.client.member_state import MemberState
from securefed.client.session import RoundSession, SessionDeps
from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import ProtocolAbort, ReplayedMessage
from securefed.fsutil import atomic_write
from securefed.protocol import ckks as ckks_wire
from securefed.protocol.plan import cohort_ids, seal_plan
from securefed.transport._generated import federation_pb2 as pb


def _lose_state(fed: Federation, name: str = "member-1") -> None:
    for suffix in ("", "-wal", "-shm"):
        (fed.p.root / "clients" / name / f"member_state.sqlite{suffix}").unlink(missing_ok=True)


def test_a_replayed_plan_is_refused_in_the_same_process_and_after_a_restart(tmp_path, tiny_model):
    fed = Federation(tmp_path, tiny_model)
    bundle, digest = fed.honest_bundle()
    d, srv, watch = fed.member()
    offer(srv, 5, fed.plan(5, digest), bundle)  # taken, trained, keys advertised; then the server lets it die
    offer(srv, 5, fed.plan(5, digest), bundle)  # the same plan again
    offer(srv, 4, fed.plan(4, digest), bundle)  # an older attempt
    assert run(d) == 0
    assert srv.accepted() == [5] and d.rounds_trained == 1
    assert [(a, o) for a, o, _ in watch.outcomes if o == "refused"] == [(5, "refused"), (4, "refused")]

    d2, srv2, _ = fed.member()  # restarted on the same state directory
    offer(srv2, 5, fed.plan(5, digest), bundle)
    offer(srv2, 6, fed.plan(6, digest), bundle)
    assert run(d2) == 0
    assert srv2.accepted() == [6] and d2.rounds_trained == 1

    # Control: a member whose state was lost takes the replayed plan, trains and would release again.
    _lose_state(fed)
    d3, srv3, _ = fed.member()
    offer(srv3, 5, fed.plan(5, digest), bundle)
    assert run(d3) == 0
    assert srv3.accepted() == [5] and d3.rounds_trained == 1


class DigestKeyedGuard:
    """TEST ONLY: the guard before this fix: in memory, counting per global-adapter digest."""

    def __init__(self, daemon, limit: int) -> None:
        self.daemon, self.limit, self.joined_at, self.done = daemon, limit, {}, set()

    def _key(self) -> str:
        return self.daemon.session.bundle.digest

    def unreleased(self) -> int:
        return len(self.joined_at.get(self._key(), set()) - self.done)

    def allows(self) -> bool:
        return self.unreleased() < self.limit

    def joined(self, attempt: int) -> None:
        self.joined_at.setdefault(self._key(), set()).add(attempt)

    def released(self, attempt: int) -> None:
        self.done.add(attempt)


class RoundKeyedGuard(DigestKeyedGuard):
    """TEST ONLY: the guard before issue 17: counting per federation round the server announced."""

    def _key(self) -> str:
        return str(self.daemon.member_state.federation_round())


def _grind(fed: Federation, srv, attempts, *, start_nudge: int = 1) -> None:
    for i, a in enumerate(attempts):
        bundle, digest = fed.honest_bundle(nudge=start_nudge + i)  # one ulp more each time: a fresh digest
        offer(srv, a, fed.plan(a, digest, neighbours=2), bundle)


def test_the_graph_grinding_guard_counts_per_federation_round_across_restarts(tmp_path, tiny_model):
    fed = Federation(tmp_path, tiny_model, 5)  # SecAgg+ k = 2 of 5: m = 3, t = 3
    d, srv, _ = fed.member()
    _grind(fed, srv, range(1, 6))
    assert run(d) == 0
    assert srv.advertised() == [1, 2]  # sparse_graph_max_retries = 2, then it declines
    declined = [r for _, ok, r in srv.decisions() if not ok]
    assert len(declined) == 3 and all("graph-grinding guard" in r for r in declined)

    d2, srv2, _ = fed.member()  # a restart does not reset the count
    _grind(fed, srv2, [6], start_nudge=10)
    assert run(d2) == 0 and srv2.advertised() == []

    # The server announces a "completed round" (a nudged adapter, round + 1) it made up: no fresh allowance.
    d3, srv3, _ = fed.member()
    _announce_fake_round(fed, srv3, attempt=7, nudge=20)
    _grind(fed, srv3, [8], start_nudge=20)
    assert run(d3) == 0 and srv3.advertised() == []


def _announce_fake_round(fed: Federation, srv, *, attempt: int, nudge: int) -> None:
    bundle, digest = fed.honest_bundle(nudge=nudge)
    srv.bundles[attempt] = (attempt, bundle)
    srv.tasks.append(pb.Task(round=attempt, aggregate_ready=pb.AggregateReady(total_size=len(bundle), sha256=digest)))


def test_announced_rounds_between_ground_sessions_do_not_reset_the_guard(tmp_path, tiny_model):
    """Issue 17's sequence: session, fake round, session, fake round, ... six sessions, limit 2."""
    fed = Federation(tmp_path, tiny_model, 5)
    d, srv, _ = fed.member()
    for i in range(6):
        _announce_fake_round(fed, srv, attempt=100 + i, nudge=30 + 2 * i)
        _grind(fed, srv, [200 + i], start_nudge=30 + 2 * i)
    assert run(d) == 0
    assert len(srv.advertised()) == 2


def test_control_the_round_keyed_guard_joins_every_session_between_fake_rounds(tmp_path, tiny_model):
    fed = Federation(tmp_path, tiny_model, 5)
    d, srv, _ = fed.member()
    d.grinding = RoundKeyedGuard(d, 2)
    for i in range(6):
        _announce_fake_round(fed, srv, attempt=100 + i, nudge=30 + 2 * i)
        _grind(fed, srv, [200 + i], start_nudge=30 + 2 * i)
    assert run(d) == 0
    assert len(srv.advertised()) == 6


def test_control_the_digest_keyed_guard_lets_every_ground_session_through(tmp_path, tiny_model):
    fed = Federation(tmp_path, tiny_model, 5)
    d, srv, _ = fed.member()
    d.grinding = DigestKeyedGuard(d, 2)
    _grind(fed, srv, range(1, 6))
    assert run(d) == 0
    assert srv.advertised() == [1, 2, 3, 4, 5]  # 5 of 5 graphs shown to the server


# ---- CKKS: one contributor set per attempt ------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.sent = []

    def header(self, attempt=0, stage=0, session=b"", sequenced=True):
        return pb.RequestHeader(round=attempt, stage=stage)

    def submit(self, header, **result):
        self.sent.append(result)


def _ckks_member(tmp_path, state: MemberState, names, idk, ctx, secret_path, plan):
    ids = cohort_ids(plan)
    deps = SessionDeps(_Recorder(), idk["a"], "a", lambda *_: None, lambda *_: None)
    session = RoundSession(plan, 9, ids, ids.int_of("a"), bundle=None, strategy=None)  # type: ignore[arg-type]
    member = CkksSession(deps, session, MemberKey(secret_path), state)
    return member, deps.connection


def test_a_ckks_member_confirms_one_contributor_set_per_attempt_across_restarts(tmp_path):
    names = ["a", "b", "c"]
    idk = {n: IdentityKeyPair.generate() for n in names}
    ctx = he.generate_client_context(he.DEFAULT_PARAMS_NAME)
    secret = tmp_path / "federation.secret.ctx"
    atomic_write(secret, ctx.serialize_secret(), mode=0o600)
    p = ctx.params
    plan = seal_plan(pb.RoundPlan(
        round=9, global_adapter_sha256=b"\x01" * 32, mode=pb.AGGREGATION_MODE_CKKS, vector_length=4,
        cohort=[pb.CohortMember(client_id=n, identity_public_key=idk[n].public_bytes()) for n in names],
        secagg=pb.SecAggParams(threshold=2),
        ckks=pb.CkksParams(poly_modulus_degree=p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
                           global_scale_bits=p.global_scale_bits,
                           public_context_sha256=hashlib.sha256(ctx.public_bytes()).digest())))
    server = he.ServerContext.from_public_bytes(ctx.public_bytes(), he.DEFAULT_PARAMS_NAME)
    own, vecs = {}, {}
    for i, n in enumerate(names):  # each upload tagged, sealed and signed as the daemon does
        own[n], parts = make_contribution(ctx, idk[n], plan.plan_sha256, 9, n, np.full(4, 0.1 * (i + 1)))
        up = ckks_wire.split_upload(parts)
        vecs[n] = he.EncryptedVector.from_parts(p, up.c0, up.seeds, 4)

    def request(members):
        """What the server driver sends: the members' sum and their entries."""
        agg = he.ServerAggregator(server, 4)
        for n in members:
            agg.add(vecs[n], sender=n)
        parts = ckks_wire.encode_request([own[n] for n in members], agg.result(list(members)).c0)
        return ckks_wire.digest_parts(parts), parts

    state_path = tmp_path / "member_state.sqlite"
    state = MemberState(state_path, "fed")
    first, conn = _ckks_member(tmp_path, state, names, idk, ctx, secret, plan)
    first.own = own["a"]
    first.confirm(*request(["a", "b"]))
    assert len(conn.sent) == 1
    state.close()

    # A new session for the same attempt, after a restart: the other set is refused, the same one is not new.
    state = MemberState(state_path, "fed")
    second, conn2 = _ckks_member(tmp_path, state, names, idk, ctx, secret, plan)
    second.own = own["a"]
    with pytest.raises(ProtocolAbort, match="a second contributor set in attempt 9"):
        second.confirm(*request(["a", "c"]))
    assert conn2.sent == []
    state.confirm_once(9, request(["a", "b"])[0])  # the set it confirmed before is still fine
    state.close()

    # Control: with its state lost, a member confirms a second set for the same attempt.
    lost = MemberState(tmp_path / "fresh.sqlite", "fed")
    third, conn3 = _ckks_member(tmp_path, lost, names, idk, ctx, secret, plan)
    third.own = own["a"]
    third.confirm(*request(["a", "c"]))
    assert len(conn3.sent) == 1


def test_member_state_is_per_federation_and_survives_reopening(tmp_path):
    path = tmp_path / "s.sqlite"
    st = MemberState(path, "fed-A")
    st.act_on(3)
    with pytest.raises(ReplayedMessage, match="already acted on attempt 3"):
        st.act_on(3)
    st.round_completed(2)
    st.round_completed(1)  # an older round announced later changes nothing
    st.sparse_joined(10, now=1000.0)
    st.close()
    st = MemberState(path, "fed-A")
    assert st.last_attempt() == 3 and st.federation_round() == 2 and st.sparse_unreleased(3600.0, 1001.0) == 1
    st.sparse_released(10)
    assert st.sparse_unreleased(3600.0, 1001.0) == 0
    other = MemberState(path, "fed-B")  # another CA: its own counters
    assert other.last_attempt() == 0 and other.federation_round() == -1
    other.act_on(1)
    st.close()
    other.close()
