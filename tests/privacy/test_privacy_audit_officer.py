"""Audits an officer can sign: anchors on `audit report` too (a truncated ledger fails, an unanchored one is
loudly NOT ANCHORED), a tampered header named as such, the federation context and the server's round log in
the report, totals per dataset across federations, delta < 1/N, and the chart over federation rounds."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET

from privacy_helpers import DATASET_A, make_context, make_event

from securefed.cli import main
from securefed.crypto.keys import IdentityKeyPair
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.ledger import Ledger, load_ledger
from securefed.privacy.report import chart_positions
from securefed.server.roundlog import RoundLog

KEY = IdentityKeyPair.generate()
BUDGET = PrivacyBudget(target_epsilon=8.0, delta=1e-5)


def _ledger(path, *, federation="fed-one", rounds=(1, 2, 3), dataset=DATASET_A, key=KEY, cid="hospital-a",
            n=1000, attempts=None):
    attempts = attempts or list(rounds)
    with Ledger.open_or_create(path, key, client_id=cid, budget=BUDGET, dataset=dataset) as led:
        for a, r in zip(attempts, rounds, strict=True):
            led.append(make_event(client_id=cid, round_id=a, noise_multiplier=2.0, steps=60, context=make_context(
                federation_id=federation, federation_round=r, dataset_fingerprint=dataset, dataset_size=n)))
    return path


def _tamper(path, table: str, sql: str) -> None:
    """What an attacker with the file can do: drop the append-only triggers of ``table`` and run ``sql``."""
    conn = sqlite3.connect(path)
    for t in (f"{table}_append_only_u", f"{table}_append_only_d"):
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")
    conn.execute(sql)
    conn.commit()
    conn.close()


def _cut_last_entry(path):
    _tamper(path, "entries", "DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)")


def _round_log(path, ledger_path, cid="hospital-a"):
    """A server round log as the coordinator writes it: attempts 1-3 (attempt 2 aborted), the entries reported."""
    log = RoundLog(path)
    led = load_ledger(ledger_path)
    for attempt, rnd in ((1, 1), (2, 2), (3, 2)):
        a = log.begin_attempt(round=rnd, mode="secagg", base_hash="00" * 32, stage="plan")
        assert a == attempt
        log.update_attempt(a, cohort=[cid, "bank-b", "lab-c"], survivors=[cid, "bank-b"], dropouts=["lab-c"],
                           declined={"lab-c": "privacy budget: spent"} if attempt == 3 else {})
        if attempt == 2:
            log.abort_attempt(a, reason="only 1 masked inputs, threshold is 2")
            continue
        log.complete_attempt(a, result_hash="11" * 32, checkpoint=f"ckpt-{rnd}")
    for e in led.entries:
        log.record_privacy_event(e.event.round_id, cid, e.event_bytes.decode(), e.signature, ledger_seq=e.seq,
                                 entry_hash=e.entry_hash, prev_hash=e.prev_hash, identity_key=KEY.public_bytes().hex())
    log.close()
    return path


def test_report_with_anchors_fails_a_ledger_whose_last_entry_was_cut(tmp_path, capsys):
    led = _ledger(tmp_path / "a.sqlite", rounds=(1, 2, 2), attempts=(1, 2, 3))
    rl = _round_log(tmp_path / "rounds.sqlite", led)
    full = load_ledger(led)
    head = f"hospital-a={len(full.entries)}:{full.entries[-1].entry_hash}"
    assert main(["audit", "report", str(led), "--round-log", str(rl), "--out", str(tmp_path / "ok")]) == 0
    assert "All ledgers verified against their anchors" in (tmp_path / "ok" / "report.html").read_text()
    _cut_last_entry(led)
    for how, args in (("round log", ["--round-log", str(rl)]), ("by hand", ["--expect-head", head])):
        out = tmp_path / how.replace(" ", "-")
        capsys.readouterr()
        assert main(["audit", "report", str(led), *args, "--out", str(out)]) == 1, how
        html = (out / "report.html").read_text()
        assert "All ledgers verified" not in html and "VERIFICATION FAILED" in html
        assert "entries were removed" in html
        data = json.loads((out / "report.json").read_text())
        assert data["all_verified"] is False and data["clients"][0]["anchored"] is True


def test_without_an_anchor_truncation_is_loudly_undetectable(tmp_path, capsys):
    led = _ledger(tmp_path / "a.sqlite")
    _cut_last_entry(led)
    assert main(["audit", "report", str(led), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "NOT ANCHORED" in err and "cannot be detected" in err
    html = (tmp_path / "r" / "report.html").read_text()
    assert "All ledgers verified" not in html and "NOT ANCHORED" in html
    assert main(["audit", "verify", str(led)]) == 0
    captured = capsys.readouterr()
    assert "NOT ANCHORED" in captured.err and "NOT all anchored" in captured.out
    assert main(["audit", "verify", str(led), "--require-anchors"]) == 1
    assert main(["audit", "report", str(led), "--require-anchors", "--out", str(tmp_path / "r2")]) == 1


def test_a_tampered_header_says_header_tampered(tmp_path, capsys):
    led = _ledger(tmp_path / "a.sqlite")
    _tamper(led, "header", "UPDATE header SET body = replace(body, '\"target_epsilon\":8.0', '\"target_epsilon\":80.0')")
    pin = f"--public-key=hospital-a={KEY.public_bytes().hex()}"
    assert main(["audit", "verify", str(led), pin]) == 1
    captured = capsys.readouterr()
    assert "header tampered" in captured.err and "no ledger given for pinned client" not in captured.err
    assert main(["audit", "report", str(led), pin, "--out", str(tmp_path / "r")]) == 1
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    header = next(c for c in data["clients"][0]["verification"]["checks"] if c["name"] == "header")
    assert not header["ok"] and header["detail"].startswith("header tampered")
    assert data["clients"][0]["client_id"] == "hospital-a"  # attributed (unverified) to the client it names


def test_report_shows_the_federation_context_and_the_round_log(tmp_path):
    led = _ledger(tmp_path / "a.sqlite", rounds=(1, 2, 2), attempts=(1, 2, 3))
    rl = _round_log(tmp_path / "rounds.sqlite", led)
    out = tmp_path / "r"
    assert main(["audit", "report", str(led), "--round-log", str(rl), "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    (fed,) = data["federations"]
    assert fed["federation_id"] == "fed-one" and fed["modes"] == ["secagg"]
    assert fed["cohort_sizes"] == [3] and fed["thresholds"] == [2] and fed["rounds"] == [1, 2]
    rows = data["clients"][0]["rounds"]
    assert [r["federation_round"] for r in rows] == [1, 2, 2] and [r["round_id"] for r in rows] == [1, 2, 3]
    assert rows[0]["context"]["dataset_size"] == 1000 and rows[0]["context"]["privacy_unit"] == "record"
    assert rows[2]["attempt"]["declined"] == {"lab-c": "privacy budget: spent"}
    assert rows[1]["attempt"]["status"] == "aborted" and rows[0]["attempt"]["contributors"] == ["hospital-a", "bank-b"]
    assert [a["attempt"] for a in data["attempts"]] == [1, 2, 3]
    html = (out / "report.html").read_text()
    for words in ("Unit of privacy", "one training example", "Per-round and cumulative epsilon",
                  "not the sum of the round epsilons", "Which epsilon is authoritative", "the one its member enforced",
                  "privacy budget: spent", "fed-one", "&delta; &lt; 1/N"):
        assert words in html, words
    checks = {c["name"]: c for c in data["clients"][0]["verification"]["checks"]}
    assert checks["delta-per-N"]["ok"] and checks["anchor"]["ok"]


def test_delta_per_n_fails_when_the_dataset_is_too_small(tmp_path, capsys):
    led = _ledger(tmp_path / "a.sqlite", n=50_000)  # delta 1e-5 < 1/N = 2e-5
    assert main(["audit", "verify", str(led)]) == 0
    small = _ledger(tmp_path / "b.sqlite", n=100_000, dataset="c3" * 32)  # 1e-5 = 1/N: not below
    capsys.readouterr()
    assert main(["audit", "verify", str(small)]) == 1
    assert "is not below 1/N" in capsys.readouterr().err


def test_totals_per_dataset_span_federations_and_keys(tmp_path):
    one = _ledger(tmp_path / "one.sqlite", federation="fed-one", rounds=(1, 2))
    other_key = IdentityKeyPair.generate()  # the member's certificate was reissued between federations
    two = _ledger(tmp_path / "two.sqlite", federation="fed-two", rounds=(1, 2, 3), key=other_key)
    elsewhere = _ledger(tmp_path / "three.sqlite", federation="fed-two", rounds=(1,), dataset="d4" * 32)
    out = tmp_path / "r"
    assert main(["audit", "report", str(one), str(two), str(elsewhere), "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    totals = {d["dataset"]: d for d in data["datasets"]}
    a = totals[DATASET_A]
    by_ledger = {c["source"]: c["epsilon"] for c in data["clients"]}
    assert a["events"] == 5 and a["federations"] == ["fed-one", "fed-two"] and len(a["ledgers"]) == 2
    assert a["total_epsilon"] > max(by_ledger[str(one)], by_ledger[str(two)])  # one budget, both federations
    assert totals["d4" * 32]["events"] == 1
    # the chart: federations side by side, x = federation round
    xs, ticks, title = chart_positions(data)
    assert "1 = fed-one" in title and "2 = fed-two" in title
    assert [label for _, label in ticks] == ["1:1", "1:2", "2:1", "2:2", "2:3"]
    html = (out / "report.html").read_text()
    svg = html[html.index("<svg"): html.index("</svg>") + len("</svg>")]
    ET.fromstring(svg)
    assert "federation:round" in svg


def test_single_federation_axis_is_the_round_number_with_gaps(tmp_path):
    led = _ledger(tmp_path / "a.sqlite", rounds=(1, 4))  # declined rounds 2 and 3: a gap, not a neighbour
    out = tmp_path / "r"
    main(["audit", "report", str(led), "--out", str(out)])
    data = json.loads((out / "report.json").read_text())
    xs, ticks, title = chart_positions(data)
    assert title == "federation round" and [x for x, _ in ticks] == [1.0, 4.0]


def test_format_1_ledgers_are_still_reported(tmp_path):
    path = tmp_path / "old.sqlite"
    with Ledger.create(path, KEY, client_id="hospital-a", budget=BUDGET) as led:
        for r in range(2):
            led.append(make_event(round_id=r))
    out = tmp_path / "r"
    assert main(["audit", "report", str(path), "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    c = data["clients"][0]
    assert c["ledger_version"] == 1 and c["dataset"] is None and c["verification"]["ok"]
    assert data["datasets"] == [] and data["federations"] == []
    html = (out / "report.html").read_text()
    assert "no federation context" in html and "attempt" in chart_positions(data)[2]
