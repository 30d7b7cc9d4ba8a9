"""One hospital audits its own ledger against the server's round log (issue 19): the round log names
every member, but only the ledgers given need to be there; they are still anchored (a cut ledger
fails). A key pinned by hand (--public-key) still demands that member's ledger."""

from __future__ import annotations

import json

from privacy_helpers import DATASET_A
from test_privacy_audit_officer import _cut_last_entry, _ledger, _round_log

from securefed.cli import main
from securefed.crypto.keys import IdentityKeyPair
from securefed.privacy.ledger import load_ledger
from securefed.server.roundlog import RoundLog

BANK = IdentityKeyPair.generate()


def _federation(tmp_path):
    a = _ledger(tmp_path / "hospital-a.sqlite")
    b = _ledger(tmp_path / "bank-b.sqlite", cid="bank-b", key=BANK, dataset=DATASET_A[::-1])
    rl = _round_log(tmp_path / "rounds.sqlite", a)
    log = RoundLog(rl)
    for e in load_ledger(b).entries:  # the server recorded bank-b's signed entries too
        log.record_privacy_event(e.event.round_id, "bank-b", e.event_bytes.decode(), e.signature, ledger_seq=e.seq,
                                 entry_hash=e.entry_hash, prev_hash=e.prev_hash, identity_key=BANK.public_bytes().hex())
    log.close()
    return a, b, rl


def test_a_member_audits_its_own_ledger_against_the_round_log(tmp_path, capsys):
    a, _, rl = _federation(tmp_path)
    out = tmp_path / "audit"
    assert main(["audit", "report", str(a), "--round-log", str(rl), "--out", str(out), "--require-anchors"]) == 0
    err = capsys.readouterr().err
    assert "bank-b took part too; their ledgers were not given (not audited here)" in err
    rep = json.loads((out / "report.json").read_text())
    assert rep["all_verified"] and rep["all_anchored"] and [c["client_id"] for c in rep["clients"]] == ["hospital-a"]
    assert main(["audit", "verify", str(a), "--round-log", str(rl)]) == 0
    # Still anchored by the round log: a ledger whose newest entry was cut fails.
    _cut_last_entry(a)
    assert main(["audit", "verify", str(a), "--round-log", str(rl)]) == 1


def test_a_key_pinned_by_hand_still_demands_that_members_ledger(tmp_path, capsys):
    a, _, rl = _federation(tmp_path)
    assert main(["audit", "verify", str(a), "--round-log", str(rl), "--public-key",
                 f"bank-b={BANK.public_bytes().hex()}"]) != 0
    err = capsys.readouterr().err
    assert "no ledger given for pinned client(s) ['bank-b']" in err and "drop their --public-key" in err
