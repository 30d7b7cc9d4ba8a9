"""The SQLite ledger: append-only, hash-chained, signed, durable; tampering is caught on load."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from privacy_helpers import make_event

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import LedgerBudgetChanged, LedgerError
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.formulas import SubsampledGaussian, rdp_epsilon
from securefed.privacy.ledger import (
    ENTRY_CONTEXT,
    Ledger,
    LedgerHead,
    check_head,
    entry_hash,
    load_export,
    load_ledger,
    sha256_hex,
)

BUDGET = PrivacyBudget(target_epsilon=8.0, delta=1e-5)
CID = "hospital-a"


@pytest.fixture
def identity():
    return IdentityKeyPair.generate()


@pytest.fixture
def ledger_path(tmp_path, identity):
    """A closed ledger with 4 entries (rounds 0..3)."""
    path = tmp_path / "ledger.sqlite"
    with Ledger.create(path, identity, client_id=CID, budget=BUDGET) as led:
        for r in range(4):
            led.append(make_event(round_id=r, noise_multiplier=1.5 + r / 10))
    return path


def _raw(conn, sql, *args):
    """Bypass the append-only triggers the way an attacker with file access would."""
    conn.execute("PRAGMA recursive_triggers=OFF")
    for t in ("entries_append_only_u", "entries_append_only_d", "header_append_only_u", "header_append_only_d"):
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")
    conn.execute(sql, args)
    conn.commit()


def test_append_chain_and_reopen(tmp_path, identity):
    path = tmp_path / "l.sqlite"
    with Ledger.create(path, identity, client_id=CID, budget=BUDGET) as led:
        assert led.head() == LedgerHead(0, led.header.header_hash)
        e0 = led.append(make_event(round_id=0))
        e1 = led.append(make_event(round_id=1, noise_multiplier=1.2))
        assert (e0.seq, e1.seq) == (0, 1)
        assert e0.prev_hash == led.header.header_hash and e1.prev_hash == e0.entry_hash
        assert e1.entry_hash == sha256_hex(bytes.fromhex(e0.entry_hash) + e1.event.canonical_bytes())
        assert e1.entry_hash == entry_hash(e0.entry_hash, e1.event_bytes)
        assert led.head() == LedgerHead(2, e1.entry_hash)
        # pragmas that make each append durable
        assert led._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ro = Ledger.open(path)  # auditor: no private key needed
    try:
        assert ro.read_only and ro.client_id == CID and ro.budget == BUDGET
        assert ro.header.public_key == identity.public_bytes()
        assert [e.event for e in ro.entries()] == [e0.event, e1.event]
        expected = rdp_epsilon([SubsampledGaussian(1.5, 0.04, 225), SubsampledGaussian(1.2, 0.04, 225)], 1e-5)
        assert ro.epsilon() == pytest.approx(expected, rel=1e-12)
        assert ro.epsilon("prv") < ro.epsilon("rdp")
        with pytest.raises(LedgerError, match="read-only"):
            ro.append(make_event(round_id=2))
    finally:
        ro.close()
    with Ledger.open(path, identity) as rw:  # the client resumes after a restart
        e2 = rw.append(make_event(round_id=2))
        assert e2.seq == 2 and e2.prev_hash == e1.entry_hash


def test_signatures_are_domain_separated_over_entry_hash(ledger_path, identity):
    from securefed.crypto.keys import verify_signature

    led = load_ledger(ledger_path)
    e = led.entries[1]
    verify_signature(identity.public_bytes(), e.signature, ENTRY_CONTEXT + bytes.fromhex(e.entry_hash))
    with pytest.raises(Exception):
        verify_signature(identity.public_bytes(), e.signature, bytes.fromhex(e.entry_hash))


def test_sqlite_refuses_update_and_delete(ledger_path, identity):
    conn = sqlite3.connect(ledger_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET event = '{}' WHERE seq = 0")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        conn.execute("UPDATE header SET body = '{}'")
    conn.close()
    assert len(load_ledger(ledger_path).entries) == 4


def test_wrong_identity_client_or_budget_is_refused(ledger_path):
    with pytest.raises(LedgerError, match="not the key this ledger was created with"):
        Ledger.open(ledger_path, IdentityKeyPair.generate())
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(ledger_path, IdentityKeyPair.generate(), client_id=CID, budget=BUDGET)


def test_open_or_create(tmp_path, identity):
    path = tmp_path / "sub" / "c.sqlite"
    with Ledger.open_or_create(path, identity, client_id=CID, budget=BUDGET) as led:
        led.append(make_event())
    with Ledger.open_or_create(path, identity, client_id=CID, budget=BUDGET) as led:
        assert len(led.entries()) == 1
    # A changed budget: exit 2 (a restart cannot fix it), and never the advice to start a new ledger,
    # which would forget what the data already spent.
    with pytest.raises(LedgerBudgetChanged, match=r"Set \[privacy\] back to the ledger's budget") as err:
        Ledger.open_or_create(path, identity, client_id=CID, budget=PrivacyBudget(target_epsilon=9, delta=1e-5))
    assert err.value.exit_code == 2 and "start a new ledger file to change it" in str(err.value)
    assert "has spent epsilon" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LedgerError, match="belongs to client"):
        Ledger.open_or_create(path, identity, client_id="other", budget=BUDGET)


def test_append_refuses_foreign_or_inconsistent_events(tmp_path, identity):
    with Ledger.create(tmp_path / "l.sqlite", identity, client_id=CID, budget=BUDGET) as led:
        with pytest.raises(LedgerError, match="client 'someone-else'"):
            led.append(make_event(client_id="someone-else"))
        with pytest.raises(LedgerError, match="delta"):
            led.append(make_event(delta=1e-6))
        with pytest.raises(LedgerError, match="accountant"):
            led.append(make_event(accountant="prv"))
        with pytest.raises(LedgerError, match="only DpEvent"):
            led.append({"noise_multiplier": 1.0})  # type: ignore[arg-type]
        assert led.entries() == ()


def test_tampered_byte_in_sqlite_file_is_detected(ledger_path):
    data = bytearray(ledger_path.read_bytes())
    needle = b'"noise_multiplier":1.6'  # entry 1's event text
    i = data.find(needle)
    assert i >= 0, "event text not found in the file"
    data[i + len(needle) - 1] = ord("9")  # 1.6 -> 1.9: more noise claimed than was used
    ledger_path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="entry 1 hash does not match"):
        load_ledger(ledger_path)
    with pytest.raises(LedgerError):
        Ledger.open(ledger_path)


def test_corrupt_file_is_a_ledger_error_not_a_crash(tmp_path, ledger_path):
    data = bytearray(ledger_path.read_bytes())
    data[100:4096] = bytes(len(data[100:4096]))  # wipe the schema page
    ledger_path.write_bytes(bytes(data))
    with pytest.raises(LedgerError):
        load_ledger(ledger_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all")
    with pytest.raises(LedgerError, match="neither|not"):
        load_ledger(junk)


def test_reordered_entries_are_detected(ledger_path):
    conn = sqlite3.connect(ledger_path)
    rows = conn.execute("SELECT seq, event, prev_hash, entry_hash, signature FROM entries ORDER BY seq").fetchall()
    _raw(conn, "DELETE FROM entries")
    for seq, (s, ev, ph, eh, sig) in zip([0, 1, 2, 3], [rows[0], rows[2], rows[1], rows[3]], strict=True):
        conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", (seq, ev, ph, eh, sig))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="entry 1 does not link"):
        load_ledger(ledger_path)


def test_deleted_middle_entry_is_detected(ledger_path):
    conn = sqlite3.connect(ledger_path)
    _raw(conn, "DELETE FROM entries WHERE seq = 1")
    conn.close()
    with pytest.raises(LedgerError, match="expected seq 1, found 2"):
        load_ledger(ledger_path)


def test_deleted_first_entry_with_renumbering_is_detected(ledger_path):
    conn = sqlite3.connect(ledger_path)
    _raw(conn, "DELETE FROM entries WHERE seq = 0")
    _raw(conn, "UPDATE entries SET seq = seq - 1")
    conn.close()
    with pytest.raises(LedgerError, match="entry 0 does not link"):
        load_ledger(ledger_path)


def test_forged_signature_is_detected(ledger_path):
    """An attacker rewrites an event, recomputes the whole chain, signs with their own key."""
    forger = IdentityKeyPair.generate()
    conn = sqlite3.connect(ledger_path)
    rows = conn.execute("SELECT seq, event, prev_hash FROM entries ORDER BY seq").fetchall()
    prev = rows[0][2]
    new_rows = []
    for seq, ev, _ in rows:
        ev = ev.replace('"steps":225', '"steps":22') if seq == 2 else ev
        h = entry_hash(prev, ev.encode())
        new_rows.append((seq, ev, prev, h, forger.sign(ENTRY_CONTEXT + bytes.fromhex(h)).hex()))
        prev = h
    _raw(conn, "DELETE FROM entries")
    conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", new_rows)
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="entry 0 signature is invalid"):
        load_ledger(ledger_path)


def test_header_budget_cannot_be_raised(ledger_path):
    conn = sqlite3.connect(ledger_path)
    (body,) = conn.execute("SELECT body FROM header").fetchone()
    _raw(conn, "UPDATE header SET body = ?", body.replace('"target_epsilon":8.0', '"target_epsilon":80.0'))
    conn.close()
    with pytest.raises(LedgerError, match="header hash does not match"):
        load_ledger(ledger_path)


def test_tail_truncation_needs_the_anchor(ledger_path):
    full = load_ledger(ledger_path)
    anchor = LedgerHead(len(full.entries), full.entries[-1].entry_hash)
    conn = sqlite3.connect(ledger_path)
    _raw(conn, "DELETE FROM entries WHERE seq = 3")
    conn.close()
    short = load_ledger(ledger_path)  # a shorter chain is still a valid chain ...
    assert len(short.entries) == 3
    with pytest.raises(LedgerError, match="entries were removed"):  # ... but not against the anchor
        check_head(short.entries, anchor)
    check_head(full.entries, LedgerHead(2, full.entries[1].entry_hash))  # a prefix anchor is fine
    with pytest.raises(LedgerError, match="anchored hash"):
        check_head(full.entries, LedgerHead(2, "00" * 32))


def test_entries_reverifies_the_file_while_open(tmp_path, identity):
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, identity, client_id=CID, budget=BUDGET)
    try:
        led.append(make_event(round_id=0))
        led.append(make_event(round_id=1))
        conn = sqlite3.connect(path)
        _raw(conn, "UPDATE entries SET event = replace(event, '\"steps\":225', '\"steps\":1') WHERE seq = 1")
        conn.close()
        with pytest.raises(LedgerError, match="entry 1 hash"):
            led.entries()
        with pytest.raises(LedgerError):
            led.epsilon()
    finally:
        led.close()


def test_export_json_roundtrip_and_tamper(tmp_path, ledger_path, identity):
    with Ledger.open(ledger_path) as led:
        text = led.export_json(tmp_path / "export.json")
        n = len(led.entries())
    exported = load_ledger(tmp_path / "export.json")
    assert len(exported.entries) == n == 4
    assert exported.header.public_key == identity.public_bytes()
    assert exported.events == load_ledger(ledger_path).events
    data = json.loads(text)
    data["entries"][2]["event"] = data["entries"][2]["event"].replace('"round_id":2', '"round_id":7')
    with pytest.raises(LedgerError, match="entry 2 hash"):
        load_export(data)
    data = json.loads(text)
    data["entries"] = data["entries"][:1] + data["entries"][2:]
    with pytest.raises(LedgerError, match="expected seq 1"):
        load_export(data)
    with pytest.raises(LedgerError, match="not a securefed ledger export"):
        load_export({"format": "other"})


def test_read_only_copy_in_a_read_only_directory(tmp_path, ledger_path):
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    shutil.copy(ledger_path, ro_dir / "copy.sqlite")
    ro_dir.chmod(0o555)
    try:
        assert len(load_ledger(ro_dir / "copy.sqlite").entries) == 4
    finally:
        ro_dir.chmod(0o755)


def test_append_is_durable_across_a_new_connection(tmp_path, identity):
    """Each append is one committed transaction: another reader sees it without any close."""
    path = tmp_path / "l.sqlite"
    led = Ledger.create(path, identity, client_id=CID, budget=BUDGET)
    try:
        led.append(make_event(round_id=0))
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 1
        conn.close()
    finally:
        led.close()
