"""End to end, in process: a real gRPC server over mutual TLS on 127.0.0.1 and three client daemons
(threads) training the tiny model with DP-SGD. Slow (Opacus + torch), so few and small."""

from __future__ import annotations

import json

import numpy as np
import pytest
from daemon_helpers import FAST_CLIENT, GoSilent, fast_server, recorders

from securefed.errors import InvalidMessage
from securefed.federation import provision, run_in_process
from securefed.privacy.ledger import load_ledger
from securefed.protocol.bundle import read_adapter_file
from securefed.server.roundlog import AttemptStatus
from securefed.strategies import StrategySettings, make_strategy

pytestmark = pytest.mark.slow


def expected_fedavg(bundle0, payloads: list[np.ndarray]) -> np.ndarray:
    """The plaintext FedAvg of exactly these client payloads, applied to the previous global adapter."""
    settings = json.loads(bundle0.settings_json)
    strategy = make_strategy(StrategySettings.model_validate(settings["strategy"]), dim=bundle0.vector.size)
    return strategy.server_apply(bundle0.vector, np.sum(payloads, axis=0), len(payloads)).global_vec


def _log(p):
    from securefed.server.roundlog import RoundLog

    return RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)


def _records(p):
    log = _log(p)
    try:
        return log.attempts()
    finally:
        log.close()


def test_secagg_equals_plaintext_fedavg_budget_decline_and_replay(tmp_path, tiny_model):
    p = provision(tmp_path, 3, mode="secagg", rounds=2, threshold=2, model_dir=tiny_model, server=fast_server(),
                  client=FAST_CLIENT,
                  # member-3 planned one round: its noise is calibrated for it, then it stops joining (and
                  # says why), untrained, rather than spend what is left in rounds of almost pure noise.
                  per_client={"member-3": {"client": {"planned_rounds": 1}}})
    sent: list = []
    replay: dict = {}

    def member1_fault(point: str, attempt: int) -> None:
        d = res_holder["daemons"]["member-1"]
        if point == "after_accept" and attempt == 2 and "status" not in replay:
            from securefed.transport._generated import federation_pb2 as pb

            replay["status"] = d.connection.call("GetStatus", pb.GetStatusRequest(header=pb.RequestHeader(client_id="member-1")))
        if point == "after_accept" and attempt == 2 and "error" not in replay:
            old = next(r for a, m, r in sent if a == 1 and m == "SubmitResult" and r.HasField("advertise_keys"))
            try:
                d.connection.call("SubmitResult", old)  # attempt 1's round keys, played again during attempt 2
            except InvalidMessage as exc:
                replay["error"] = str(exc)

    res_holder: dict = {}

    import securefed.federation as fed

    orig_start = fed.start_clients

    def start_and_wrap(*a, **kw):
        ct = orig_start(*a, **kw)
        res_holder["daemons"] = ct.daemons
        d1 = ct.daemons["member-1"]
        inner = d1.connection.call

        def recording_call(method, request):
            sent.append((d1.current_attempt(), method, request))
            return inner(method, request)

        d1.connection.call = recording_call
        return ct

    fed.start_clients = start_and_wrap
    try:
        watch = recorders(p.client_tomls, **{"member-1": member1_fault})
        res = run_in_process(p, hooks=watch, timeout_s=240)
    finally:
        fed.start_clients = orig_start
    assert res.ok, [r.reason for r in _records(p)]
    assert all(code == 0 for code in res.client_exit.values())
    recs = _records(p)
    assert [r.status for r in recs] == [AttemptStatus.COMPLETED, AttemptStatus.COMPLETED]
    assert set(recs[0].survivors) == {"member-1", "member-2", "member-3"}
    assert set(recs[1].survivors) == {"member-1", "member-2"}
    assert recs[1].declined["member-3"].startswith("planned rounds done: this member released updates in 1 rounds")

    # The secure aggregate equals the plaintext FedAvg of the same updates (fixed-point error only).
    store = res.server.coordinator.store
    for rec in recs:
        prev = read_adapter_file(store.path_for(rec.round - 1))
        got = read_adapter_file(store.path_for(rec.round)).vector
        payloads = [watch[m].released_payloads[rec.attempt] for m in sorted(rec.survivors)]
        want = expected_fedavg(prev, payloads)
        assert np.max(np.abs(got - prev.vector)) > 1e-4  # the round really moved the adapter
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    # GetStatus, asked mid-round by an authenticated member.
    st = replay["status"]
    assert st.client_id == "member-1" and st.current_round == 2 and st.completed_rounds == 1
    assert st.protocol_version == "securefed.v1" and st.registered_clients == 3

    # Replay of an earlier attempt's message is refused by the server (attempts and rounds named apart).
    assert "for attempt 1, the current attempt is 2 (round 2)" in replay.get("error", "")

    # member-3 trained its one planned round, then declined, untrained, spending nothing more.
    m3 = res.clients["member-3"]
    assert m3.rounds_trained == 1 and len(watch["member-3"].declined) == 1 and list(watch["member-3"].released_payloads) == [1]
    assert len(load_ledger(p.root / "clients" / "member-3" / "ledger.sqlite").events) == 1

    # The server recorded exactly the signed entries the participants wrote, before release.
    log = _log(p)
    events = log.privacy_events()
    log.close()
    for m in ("member-1", "member-2", "member-3"):
        ledger = load_ledger(p.root / "clients" / m / "ledger.sqlite")
        assert [e.entry_hash for e in events if e.client_id == m] == [e.entry_hash for e in ledger.entries]
        assert [e.round_id for e in ledger.events] == [r.attempt for r in recs if m in r.survivors]
    # Every participant holds the final global adapter locally.
    final = read_adapter_file(store.path_for(2))
    for m in ("member-1", "member-2", "member-3"):
        assert read_adapter_file(p.root / "clients" / m / "global" / "adapter.safetensors").digest == final.digest


def test_ckks_equals_plaintext_fedavg(tmp_path, tiny_model):
    p = provision(tmp_path, 3, mode="ckks", rounds=1, threshold=2, model_dir=tiny_model, server=fast_server(),
                  client=FAST_CLIENT)
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=240)
    assert res.ok, [r.reason for r in _records(p)]
    (rec,) = _records(p)
    store = res.server.coordinator.store
    prev = read_adapter_file(store.path_for(0))
    got = read_adapter_file(store.path_for(1)).vector
    payloads = [watch[m].released_payloads[rec.attempt] for m in ("member-1", "member-2", "member-3")]
    # CKKS is approximate (scale 2^40 plus flooding noise): agreement to 1e-5 on a delta of ~1e-2.
    np.testing.assert_allclose(got, expected_fedavg(prev, payloads), rtol=0, atol=1e-5)
    assert np.max(np.abs(got - prev.vector)) > 1e-4


def test_round_aborts_below_threshold_then_next_round_runs(tmp_path, tiny_model):
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model,
                  server=fast_server(masked_input_s=3.0), client=FAST_CLIENT)

    def silent_in_attempt_1(point: str, attempt: int) -> None:
        if point == "before_masked_input" and attempt == 1:
            raise GoSilent()  # as if the process died after sharing its keys

    watch = recorders(p.client_tomls, **{"member-2": silent_in_attempt_1, "member-3": silent_in_attempt_1})
    res = run_in_process(p, hooks=watch, timeout_s=240)
    assert res.ok
    first, second = _records(p)
    assert first.status is AttemptStatus.ABORTED and "threshold" in first.reason
    assert set(first.dropouts) == {"member-2", "member-3"}
    assert second.status is AttemptStatus.COMPLETED and second.round == 1 and len(second.survivors) == 3
    # member-1 released (and accounted) in both attempts; the silent ones only in the second.
    n_entries = {m: len(load_ledger(p.root / "clients" / m / "ledger.sqlite").events) for m in res.clients}
    assert n_entries == {"member-1": 2, "member-2": 1, "member-3": 1}
    assert {h["outcome"] for h in watch["member-1"].history} == {"aborted", "completed"}


def test_client_refuses_plaintext_rounds_unless_it_opted_in(tmp_path, tiny_model):
    # The server is configured for plaintext (debug); member-3 did not opt in, so it declines and
    # its update never reaches the server in clear. The other two (opted in) still complete the round.
    p = provision(tmp_path, 3, mode="plaintext", rounds=1, threshold=2, model_dir=tiny_model,
                  server=fast_server(), client=FAST_CLIENT,
                  per_client={"member-3": {"client": {"allow_plaintext_for_debugging": False}}})
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=240)
    assert res.ok
    (rec,) = _records(p)
    assert set(rec.survivors) == {"member-1", "member-2"} and "plaintext" in rec.declined["member-3"]
    assert not watch["member-3"].released_payloads and res.clients["member-3"].rounds_trained == 0
    store_dir = p.root / "server-state" / "checkpoints"
    prev, got = read_adapter_file(store_dir / "global-r000000.safetensors"), read_adapter_file(store_dir / "global-r000001.safetensors")
    payloads = [watch[m].released_payloads[rec.attempt] for m in ("member-1", "member-2")]
    np.testing.assert_allclose(got.vector, expected_fedavg(prev, payloads), rtol=0, atol=1e-6)


def test_client_declines_a_cohort_below_its_minimum(tmp_path, tiny_model):
    # member-3 hides its update only in crowds of 4 or more; the server lists 3: it declines, untrained.
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model, server=fast_server(),
                  client=FAST_CLIENT, per_client={"member-3": {"client": {"min_cohort_size": 4}}})
    res = run_in_process(p, timeout_s=240)
    assert res.ok
    (rec,) = _records(p)
    assert set(rec.survivors) == {"member-1", "member-2"} and "min_cohort_size 4" in rec.declined["member-3"]
    assert res.clients["member-3"].rounds_trained == 0


def test_sparse_graph_round_with_keys_left_out_is_abandoned_by_members(tmp_path, tiny_model):
    # SecAgg+ (k = 2 of 4): the key set seeds the neighbour graph, so members refuse to go on when the
    # server's key broadcast leaves a listed member out (here member-4, which declined: it wants 5).
    p = provision(tmp_path, 4, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model,
                  server={**fast_server(share_keys_s=2.0), "federation": {"neighbour_degree": 2, "max_attempts": 1, "max_colluding_members": 0}},
                  client=FAST_CLIENT, per_client={"member-4": {"client": {"min_cohort_size": 5}}})
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=240)
    assert res.ok is False
    (rec,) = _records(p)
    assert rec.status is AttemptStatus.ABORTED and "member-4" in rec.declined
    assert set(rec.dropouts) == {"member-1", "member-2", "member-3"}  # none sent shares
    for m in ("member-1", "member-2", "member-3"):
        assert not watch[m].released_payloads  # nothing left any member


def test_members_out_of_budget_end_the_federation_cleanly_and_status_says_why(tmp_path, tiny_model, capsys):
    # Every member planned one round, the server wants three: after round 1 all of them decline (their
    # calibrated budget is spent). The federation ends at once, saying so, instead of burning its
    # remaining 8 attempts within a second and ending "gave up after 9 attempts".
    from securefed.cli import main

    p = provision(tmp_path, 3, mode="secagg", rounds=3, threshold=2, model_dir=tiny_model, server=fast_server(),
                  client={**FAST_CLIENT, "client": {"planned_rounds": 1, "max_colluding_members": 0}})
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=240)
    co = res.server.coordinator
    assert res.ok is False and co.ending == "budget_exhausted"
    assert co.detail.startswith("privacy budget exhausted for all members after 1 of 3 rounds")
    recs = _records(p)
    assert [r.status for r in recs] == [AttemptStatus.COMPLETED, AttemptStatus.ABORTED]
    assert set(recs[1].declined) == {"member-1", "member-2", "member-3"}
    assert all(code == 0 for code in res.client_exit.values())  # each member was told Done, with the reason
    for m in p.client_tomls:
        assert [h["outcome"] for h in watch[m].history] == ["completed", "declined", "aborted"]
    assert main(["status", "--config", str(p.server_toml)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("server: stopped") and "rounds completed: 1/3" in out
    for m in p.client_tomls:
        line = next(ln for ln in out.splitlines() if ln.startswith(m))
        assert "sits out: planned rounds done" in line and " of 8" in line  # epsilon spent of the target


def test_a_rewound_ledger_is_refused_loudly_on_both_sides_and_not_waited_for(tmp_path, tiny_model, capsys):
    import logging

    import securefed.federation as fed
    from securefed.cli import main
    from securefed.privacy.ledger import Ledger

    # A masked-input deadline of 5 minutes: the refused member must not be waited for.
    p = provision(tmp_path, 3, mode="secagg", rounds=2, threshold=2, model_dir=tiny_model,
                  server=fast_server(masked_input_s=300.0), client=FAST_CLIENT)
    daemons: dict = {}

    def rewind(point: str, attempt: int) -> None:
        if point == "after_training" and attempt == 2:
            d = daemons["member-3"]
            # Its ledger restored from an old backup: a new chain that rewrites entry 0 already reported.
            d.ledger = d.budget.ledger = d.deps.record_release.ledger = Ledger.create(
                tmp_path / "restored.sqlite", d.identity, client_id="member-3", budget=d.config.privacy)

    orig_start = fed.start_clients

    def start_and_keep(*a, **kw):
        ct = orig_start(*a, **kw)
        daemons.update(ct.daemons)
        return ct

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep(level=logging.ERROR)
    loggers = [logging.getLogger("securefed.client"), logging.getLogger("securefed.server.security")]
    for lg in loggers:
        lg.addHandler(keep)
    fed.start_clients = start_and_keep
    try:
        res = run_in_process(p, hooks=recorders(p.client_tomls, **{"member-3": rewind}), timeout_s=240)
    finally:
        fed.start_clients = orig_start
        for lg in loggers:
            lg.removeHandler(keep)
    assert res.ok
    first, second = _records(p)
    assert second.status is AttemptStatus.COMPLETED and second.dropouts == ("member-3",)
    assert second.timings["masked_input"] < 60  # refused, so not waited for (deadline 300 s)
    member_side = [r for r in seen if r.name == "securefed.client" and "SECURITY: ledger" in r.getMessage()]
    server_side = [r for r in seen if r.name == "securefed.server.security" and "ledger conflict" in r.getMessage()]
    assert member_side and len(server_side) == 2  # seen by the server, and reported by the member
    assert main(["status", "--config", str(p.server_toml)]) == 0
    out = capsys.readouterr().out
    alerts = [ln for ln in out.splitlines() if ln.startswith("SECURITY")]
    assert len(alerts) == 2 and all("ledger conflict" in a and "member-3" in a for a in alerts)
    assert any("reported by member-3" in a for a in alerts) and any("(member member-3" in a for a in alerts)
