"""`securefed audit verify|report` and `securefed privacy epsilon|plan`: end to end through the CLI."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET

import pytest
from privacy_helpers import make_event

from securefed.cli import main
from securefed.crypto.keys import IdentityKeyPair
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.formulas import DEFAULT_RDP_ORDERS, SubsampledGaussian, rdp_curve, rdp_epsilon
from securefed.privacy.ledger import ENTRY_CONTEXT, Ledger, entry_hash, load_ledger
from securefed.privacy.verify import direct_rdp, independent_rdp_epsilon, verify_ledger

KEYS = {"alpha": IdentityKeyPair.generate(), "beta": IdentityKeyPair.generate()}


def _make_ledger(path, cid, *, accountant="rdp", target=8.0, rounds=4, insecure_round=None, sigma=1.5):
    with Ledger.create(path, KEYS[cid], client_id=cid,
                       budget=PrivacyBudget(target_epsilon=target, delta=1e-5, accountant=accountant)) as led:
        for r in range(rounds):
            led.append(make_event(client_id=cid, round_id=r, accountant=accountant,
                                  noise_multiplier=sigma if r % 2 == 0 else sigma + 0.3,
                                  secure_rng=(r != insecure_round)))
    return path


@pytest.fixture
def two_ledgers(tmp_path):
    a = _make_ledger(tmp_path / "alpha.sqlite", "alpha")
    b = _make_ledger(tmp_path / "beta.sqlite", "beta", accountant="prv", insecure_round=1)
    return a, b


def _drop_triggers(conn):
    for t in ("entries_append_only_u", "entries_append_only_d"):
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")


def test_verify_clean_ledgers_passes(two_ledgers, capsys):
    a, b = two_ledgers
    keys = [f"--public-key={cid}={k.public_bytes().hex()}" for cid, k in KEYS.items()]
    assert main(["audit", "verify", str(a), str(b), *keys]) == 0
    out = capsys.readouterr().out
    assert "all 2 ledger(s) verified" in out
    assert "[pass] rdp-crosscheck" in out and "[pass] prv-crosscheck" in out and "[pass] public-key" in out
    assert "INSECURE RNG: rounds [1]" in out  # a warning, loudly, but not a failure


def test_independent_epsilon_agrees_with_opacus(two_ledgers):
    a, _ = two_ledgers
    v = verify_ledger(a)
    assert v.ok and v.epsilon == v.epsilon_rdp
    names = {c.name for c in v.checks}
    assert {"header", "chain", "rdp-crosscheck", "rdp-direct", "budget"} <= names
    # over all orders dp-accounting's looser fractional series lands a little above Opacus
    assert v.epsilon_rdp <= v.epsilon_rdp_independent <= v.epsilon_rdp * 1.001
    # and on Opacus' reference run
    ref = make_event(steps=2250)
    assert independent_rdp_epsilon([ref], 1e-5) == pytest.approx(7.3291, rel=1e-3)
    ints = [a for a in DEFAULT_RDP_ORDERS if float(a).is_integer()]
    assert independent_rdp_epsilon([ref], 1e-5, ints) == pytest.approx(
        rdp_epsilon([SubsampledGaussian(1.5, 0.04, 2250)], 1e-5, ints), rel=1e-12)


# Renyi divergence of the reference mechanism over 2250 steps, by 40-digit mpmath quadrature
# (offline, documented): order 1.1 -> 1.08372766507717..., order 3.9 -> 4.12470494906368...
@pytest.mark.parametrize(("order", "expected"), [(1.1, 1.0837276650771733), (3.9, 4.124704949063682)])
def test_direct_integration_matches_high_precision_values(order, expected):
    assert direct_rdp(0.04, 1.5, order) * 2250 == pytest.approx(expected, rel=1e-9)
    assert direct_rdp(0.04, 1.5, order) == pytest.approx(
        float(rdp_curve([SubsampledGaussian(1.5, 0.04, 1)], orders=(order,))[0]), rel=1e-9)
    assert direct_rdp(0.0, 1.5, order) == 0.0 and direct_rdp(1.0, 2.0, order) == pytest.approx(order / 8)


def test_verify_catches_a_wrong_accountant(two_ledgers, monkeypatch):
    """If the Opacus-derived numbers were off by 5% (a bug, or a doctored install), verify fails."""
    import securefed.privacy.verify as verify_mod

    a, _ = two_ledgers
    real = verify_mod.rdp_curve
    monkeypatch.setattr(verify_mod, "rdp_curve", lambda mechs, orders=DEFAULT_RDP_ORDERS: real(mechs, orders) * 0.95)
    v = verify_ledger(a)
    failed = {c.name for c in v.failures()}
    assert not v.ok and {"rdp-crosscheck", "rdp-direct"} <= failed


def test_verify_fails_on_a_tampered_byte(two_ledgers, capsys):
    a, b = two_ledgers
    data = bytearray(a.read_bytes())
    i = data.find(b'"steps":225')
    assert i >= 0
    data[i + len(b'"steps":2')] = ord("0")  # 225 -> 205
    a.write_bytes(bytes(data))
    assert main(["audit", "verify", str(a), str(b)]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "hash does not match" in captured.err


def test_verify_fails_on_reordering(two_ledgers, capsys):
    a, _ = two_ledgers
    conn = sqlite3.connect(a)
    _drop_triggers(conn)
    rows = conn.execute("SELECT seq, event, prev_hash, entry_hash, signature FROM entries ORDER BY seq").fetchall()
    conn.execute("DELETE FROM entries")
    for seq, row in zip(range(4), [rows[1], rows[0], rows[2], rows[3]], strict=True):
        conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", (seq, *row[1:]))
    conn.commit()
    conn.close()
    assert main(["audit", "verify", str(a)]) == 1
    assert "does not link" in capsys.readouterr().err


def test_verify_fails_on_deleted_entry(two_ledgers, capsys):
    a, _ = two_ledgers
    conn = sqlite3.connect(a)
    _drop_triggers(conn)
    conn.execute("DELETE FROM entries WHERE seq = 2")
    conn.commit()
    conn.close()
    assert main(["audit", "verify", str(a)]) == 1
    assert "expected seq 2, found 3" in capsys.readouterr().err


def test_verify_fails_on_forged_signature(two_ledgers, capsys):
    a, _ = two_ledgers
    conn = sqlite3.connect(a)
    _drop_triggers(conn)
    (seq, ev, prev) = conn.execute("SELECT seq, event, prev_hash FROM entries WHERE seq = 3").fetchone()
    h = entry_hash(prev, ev.encode())
    forged = IdentityKeyPair.generate().sign(ENTRY_CONTEXT + bytes.fromhex(h)).hex()
    conn.execute("UPDATE entries SET signature = ? WHERE seq = 3", (forged,))
    conn.commit()
    conn.close()
    assert main(["audit", "verify", str(a)]) == 1
    assert "entry 3 signature is invalid" in capsys.readouterr().err


def test_verify_fails_on_a_whole_ledger_signed_by_another_key(tmp_path, capsys):
    """A consistent ledger re-made by an impostor passes the self-check but not a pinned key."""
    impostor = tmp_path / "alpha.sqlite"
    KEYS_BACKUP = KEYS["alpha"]
    KEYS["alpha"] = IdentityKeyPair.generate()
    try:
        _make_ledger(impostor, "alpha")
    finally:
        KEYS["alpha"] = KEYS_BACKUP
    assert main(["audit", "verify", str(impostor)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(impostor), f"--public-key=alpha={KEYS_BACKUP.public_bytes().hex()}"]) == 1
    assert "different key" in capsys.readouterr().err


def test_verify_fails_when_epsilon_exceeds_budget(tmp_path, capsys):
    # The client's own guard would have declined: a ledger written around it must not verify.
    p = _make_ledger(tmp_path / "alpha.sqlite", "alpha", target=1.0, sigma=0.8)
    assert main(["audit", "verify", str(p)]) == 1
    assert "EXCEEDS target 1" in capsys.readouterr().err


def test_verify_detects_tail_truncation_against_an_anchor(two_ledgers, capsys):
    a, _ = two_ledgers
    full = load_ledger(a)
    anchor = f"alpha={len(full.entries)}:{full.entries[-1].entry_hash}"
    assert main(["audit", "verify", str(a), "--expect-head", anchor]) == 0
    conn = sqlite3.connect(a)
    _drop_triggers(conn)
    conn.execute("DELETE FROM entries WHERE seq = 3")
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert main(["audit", "verify", str(a), "--expect-head", anchor]) == 1
    assert "entries were removed" in capsys.readouterr().err


def test_verify_json_and_duplicate_client(two_ledgers, tmp_path, capsys):
    a, b = two_ledgers
    with Ledger.open(a) as led:
        led.export_json(tmp_path / "alpha.json")
    assert main(["audit", "verify", str(b), str(tmp_path / "alpha.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["all_verified"] is True and {c["client_id"] for c in report["clients"]} == {"alpha", "beta"}
    assert main(["audit", "verify", str(a), str(tmp_path / "alpha.json")]) == 1
    assert "also has ledger" in capsys.readouterr().out


def test_verify_bad_arguments_are_one_line_errors(two_ledgers, capsys):
    a, _ = two_ledgers
    assert main(["audit", "verify", str(a), "--public-key", "alpha=zz"]) == 2
    assert "CLIENT=HEX" in capsys.readouterr().err
    assert main(["audit", "verify", str(a), "--public-key", f"gamma={'00' * 32}"]) == 1
    assert "no ledger given for pinned client(s) ['gamma']" in capsys.readouterr().err


def test_report_html_svg_and_json(two_ledgers, tmp_path, capsys):
    a, b = two_ledgers
    out = tmp_path / "report"
    assert main(["audit", "report", str(a), str(b), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    # self-contained: inline SVG, no script, no external resource
    assert "<svg" in html and "<polyline" in html and "stroke-dasharray" in html
    assert "<script" not in html.lower() and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    svg = html[html.index("<svg"): html.index("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)  # well-formed XML
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert "INSECURE RNG" in html
    clients = {c["client_id"]: c for c in data["clients"]}
    alpha, beta = clients["alpha"], clients["beta"]
    assert alpha["verification"]["ok"] and beta["verification"]["ok"]
    assert [r["round_id"] for r in alpha["rounds"]] == [0, 1, 2, 3]
    assert [r["noise_multiplier"] for r in alpha["rounds"]] == [1.5, 1.8, 1.5, 1.8]
    row = alpha["rounds"][2]
    assert (row["sample_rate"], row["steps"], row["clip_norm"], row["delta"], row["accountant"]) == (
        0.04, 225, 1.0, 1e-5, "rdp")
    cum = [r["cumulative_epsilon"] for r in alpha["rounds"]]
    assert cum == sorted(cum) and cum[-1] == pytest.approx(alpha["epsilon"])
    assert alpha["epsilon"] == pytest.approx(load_ledger(a).entries and verify_ledger(a).epsilon)
    assert alpha["remaining_budget"] == pytest.approx(8.0 - cum[-1])
    assert all(r["remaining_budget"] == pytest.approx(8.0 - r["cumulative_epsilon"]) for r in alpha["rounds"])
    assert beta["insecure_rng_rounds"] == [1] and beta["rounds"][1]["secure_rng"] is False
    assert beta["budget"]["accountant"] == "prv" and beta["epsilon"] < alpha["epsilon"] + 1e-9
    assert row["config_hash"] == "ab" * 32 and f"{cum[-1]:.6g}" in html
    # the PLD cross-check exists only for the PRV ledger: the RDP row says n/a, not infinity
    # (the cross-checks sit in their own table, apart from the authoritative spend: issue 19)
    summary = html[html.index("<h3>Cross-checks"): html.index("</table>", html.index("<h3>Cross-checks"))]
    alpha_row = summary[summary.index(">alpha<"):].split("</tr>")[0]
    beta_row = summary[summary.index(">beta<"):].split("</tr>")[0]
    assert alpha_row.endswith("<td>n/a</td>") and "&infin;" not in alpha_row
    assert f"{beta['epsilon_prv_dp_accounting_pld']:.6g}" in beta_row


def test_report_of_a_broken_ledger_flags_it(two_ledgers, tmp_path, capsys):
    a, b = two_ledgers
    conn = sqlite3.connect(b)
    _drop_triggers(conn)
    conn.execute("UPDATE entries SET event = replace(event, '\"steps\":225', '\"steps\":25') WHERE seq = 0")
    conn.commit()
    conn.close()
    out = tmp_path / "r"
    assert main(["audit", "report", str(a), str(b), "--out", str(out)]) == 1
    data = json.loads((out / "report.json").read_text())
    beta = next(c for c in data["clients"] if c["client_id"] == "beta")
    assert data["all_verified"] is False and beta["verification"]["ok"] is False
    assert beta["verification"]["events_verified"] is False
    html = (out / "report.html").read_text()
    assert "VERIFICATION FAILED" in html and "UNVERIFIED" in html


# --- securefed privacy ---------------------------------------------------------------------------


def test_privacy_epsilon_cli_last_line_is_the_number(capsys):
    args = ["privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04", "--steps", "2250",
            "--delta", "1e-5"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("7.3291") and float(last) == pytest.approx(7.32911117, rel=1e-8)
    assert main([*args, "--accountant", "prv", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["accountant"] == "prv" and obj["epsilon"] == pytest.approx(6.78, abs=0.01)
    assert main(["privacy", "epsilon", "--noise-multiplier", "0", "--sample-rate", "0.1", "--steps", "5",
                 "--delta", "1e-5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "epsilon": None, "unbounded": True, "accountant": "rdp", "noise_multiplier": 0.0, "sample_rate": 0.1,
        "steps": 5, "delta": 1e-5}
    assert main(["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "2", "--steps", "5",
                 "--delta", "1e-5"]) == 2
    assert "sample_rate must be in [0, 1]" in capsys.readouterr().err


def test_privacy_plan_cli(capsys):
    args = ["privacy", "plan", "--dataset-size", "10000", "--batch-size", "64", "--epochs-per-round", "1",
            "--rounds", "5", "--clip", "1.0", "--target-epsilon", "8", "--delta", "1e-5"]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps_per_round"] == 157 and plan["sample_rate"] == pytest.approx(0.0064)
    eps = [r["epsilon"] for r in plan["per_round"]]
    assert len(eps) == 5 and eps == sorted(eps) and eps[-1] <= 8.0 and eps[-1] > 7.9
    assert plan["epsilon_total"] == eps[-1]
    assert rdp_epsilon([SubsampledGaussian(plan["noise_multiplier"], 0.0064, 785)], 1e-5) == pytest.approx(eps[-1])
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "calibrated noise multiplier" in text and text.count("\n") >= 8
    assert main([*args[:-2], "--delta", "1e-3"]) == 2
    assert "set privacy.delta to at most 1e-05" in capsys.readouterr().err
    bad = [*args]
    bad[bad.index("8")] = "0.01"
    assert main(bad) == 2
    assert "unreachable" in capsys.readouterr().err


def test_privacy_plan_accounts_for_a_ledger(two_ledgers, capsys):
    a, _ = two_ledgers
    args = ["privacy", "plan", "--dataset-size", "10000", "--batch-size", "400", "--epochs-per-round", "1",
            "--rounds", "3", "--clip", "1.0", "--target-epsilon", "8", "--delta", "1e-5", "--json"]
    assert main(args) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert main([*args, "--ledger", str(a)]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["prior_epsilon"] > 0 and resumed["noise_multiplier"] > fresh["noise_multiplier"]
    assert resumed["epsilon_total"] <= 8.0


def test_verify_fails_on_a_round_above_the_per_round_cap(tmp_path):
    path = tmp_path / "capped.sqlite"
    budget = PrivacyBudget(target_epsilon=20.0, delta=1e-5, per_round_epsilon=2.5)
    with Ledger.create(path, KEYS["alpha"], client_id="alpha", budget=budget) as led:
        led.append(make_event(client_id="alpha", round_id=0, steps=100))
        led.append(make_event(client_id="alpha", round_id=1, steps=2250))  # about 7.3 on its own
    v = verify_ledger(path)
    assert [c.name for c in v.failures()] == ["per-round-cap"]
    assert "per_round_epsilon 2.5 exceeded by round 1 (epsilon 7.329)" in v.failures()[0].detail


def test_verify_an_empty_ledger(tmp_path):
    path = tmp_path / "empty.sqlite"
    Ledger.create(path, KEYS["beta"], client_id="beta",
                  budget=PrivacyBudget(target_epsilon=1.0, delta=1e-5, accountant="prv")).close()
    v = verify_ledger(path, expected_public_key=KEYS["beta"].public_bytes())
    assert v.ok and v.epsilon == 0.0 and v.events == ()


def test_privacy_status_and_export_cli(two_ledgers, tmp_path, capsys):
    a, _ = two_ledgers
    assert main(["privacy", "status", str(a), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["client_id"] == "alpha" and st["entries"] == 4
    assert st["epsilon"] == pytest.approx(verify_ledger(a).epsilon) and st["remaining"] == pytest.approx(8 - st["epsilon"])
    assert st["head"]["entry_hash"] == load_ledger(a).entries[-1].entry_hash
    out = tmp_path / "alpha.json"
    assert main(["privacy", "export", str(a), "--out", str(out)]) == 0
    assert load_ledger(out).events == load_ledger(a).events
    data = bytearray(a.read_bytes())
    i = data.find(b'"round_id":3')
    data[i + len(b'"round_id":')] = ord("5")
    a.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["privacy", "status", str(a)]) == 1
    assert "entry 3 hash does not match" in capsys.readouterr().err
