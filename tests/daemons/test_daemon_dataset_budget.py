"""End to end: one budget per dataset. Three members spend their budget in one federation; a second
federation (another CA, so other identity keys) on the same data finds it spent: every member declines,
trains nothing, and its ledger directory holds both federations' spend for that dataset."""

from __future__ import annotations

import pytest
from daemon_helpers import FAST_CLIENT, fast_server

from securefed.client.config import load_client_config
from securefed.client.trainer import Trainer
from securefed.federation import provision, run_in_process
from securefed.privacy.accountants import accountant_class, compute_epsilon
from securefed.privacy.formulas import SubsampledGaussian
from securefed.privacy.ledger import load_ledger
from securefed.server.roundlog import RoundLog
from securefed.training.dp import plan_steps

pytestmark = pytest.mark.slow

SIGMA = 1.0


def _one_round_fits_two_do_not(toml) -> float:
    """A target between the epsilon of one round and of two, at this member's own q and steps."""
    cfg = load_client_config(toml)
    q, steps = plan_steps(cfg.training, Trainer(cfg).dataset_size)
    rdp, mech = accountant_class("rdp"), SubsampledGaussian(SIGMA, q, steps)
    one, two = (rdp.epsilon_of_mechanisms([mech] * k, cfg.privacy.delta) for k in (1, 2))
    return round((one + two) / 2, 6)


def test_a_second_federation_on_the_same_data_finds_the_budget_spent(tmp_path, tiny_model):
    ledgers = {m: tmp_path / "member-data" / m / "ledgers" for m in ("member-1", "member-2", "member-3")}
    per = {m: {"client": {"ledger_path": None, "ledger_dir": str(d)}} for m, d in ledgers.items()}
    client = {**FAST_CLIENT, "training": {**FAST_CLIENT["training"], "noise_multiplier": SIGMA}}

    def federation(root, fed_id, targets=None):
        pc = {m: {**v, **({"privacy": {"target_epsilon": targets[m], "delta": 1e-5}} if targets else {})}
              for m, v in per.items()}
        return provision(root, 3, rounds=1, threshold=2, model_dir=tiny_model, client=client, per_client=pc,
                         server={**fast_server(), "server": {"federation_id": fed_id},
                                 "federation": {"max_attempts": 1, "max_colluding_members": 0}})

    first = federation(tmp_path / "fed-one", "fed-one")
    targets = {m: _one_round_fits_two_do_not(t) for m, t in first.client_tomls.items()}
    first = federation(tmp_path / "fed-one", "fed-one", targets)
    res = run_in_process(first, timeout_s=240)
    assert res.ok
    first_ledger = {m: d.ledger.path for m, d in res.clients.items()}
    spent = {m: load_ledger(p).events for m, p in first_ledger.items()}
    eps = {m: compute_epsilon(ev, 1e-5, "rdp") for m, ev in spent.items()}
    assert all(len(spent[m]) == 1 and 0 < eps[m] <= targets[m] for m in spent)

    second = federation(tmp_path / "fed-two", "fed-two", targets)  # a new CA: new identity keys
    res2 = run_in_process(second, timeout_s=240)
    log = RoundLog(second.root / "server-state" / "rounds.sqlite", readonly=True)
    try:
        (attempt,) = log.attempts()
        assert log.privacy_events() == []
    finally:
        log.close()
    assert set(attempt.declined) == set(targets)  # all three, before training
    for m, d in res2.clients.items():
        assert d.rounds_trained == 0
        # What its budget counted: the first federation's ledger of the same data (another identity key).
        assert d.ledger.earlier_files == (first_ledger[m],) and ".key-" in d.ledger.path.name
        assert [e.context.federation_id for e in spent[m]] == ["fed-one"]
        assert load_ledger(d.ledger.path).events == ()
        assert len(list(ledgers[m].glob("*.sqlite"))) == 2  # one dataset, two identity keys
