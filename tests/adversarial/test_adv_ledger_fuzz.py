"""The privacy ledger read back from disk or from an export: every byte is untrusted.

A client wanting to hide spent budget (or a corrupted disk) can change anything in the file. Every
decoder must either verify the exact signed history or raise a typed error (``LedgerError``,
``InvalidMessage``):
never a traceback, and never a *different* verified history (which could under-count epsilon).
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import LedgerError, SecureFedError
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.events import DpEvent, LibraryVersions
from securefed.privacy.ledger import (
    Ledger,
    check_head,
    entry_hash,
    load_export,
    load_ledger,
)

_FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BUDGET = PrivacyBudget(target_epsilon=8.0, delta=1e-5)


def _event(round_id: int, sigma: float) -> DpEvent:
    return DpEvent(client_id="org-a", round_id=round_id, noise_multiplier=sigma, sample_rate=0.05, steps=100,
                   delta=1e-5, clip_norm=1.0, accountant="rdp", secure_rng=True,
                   library_versions=LibraryVersions(opacus="1.6.0", torch="2.13.0", securefed="0.1.0"),
                   config_hash="cd" * 32, timestamp="2026-11-28T05:00:00.000000Z")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "org-a.sqlite"
    with Ledger.create(path, IdentityKeyPair.generate(), client_id="org-a", budget=BUDGET) as ledger:
        for r, sigma in enumerate((1.0, 1.2, 0.9, 1.1)):
            ledger.append(_event(r, sigma))
        return ledger.export_dict(), path


def _events_of(data) -> tuple[DpEvent, ...]:
    return load_export(json.loads(json.dumps(data))).events


@_FUZZ
@given(raw=st.binary(max_size=600))
def test_arbitrary_bytes_are_never_a_dp_event_or_a_ledger(tmp_path, raw):
    with pytest.raises(SecureFedError):
        DpEvent.from_json(raw)
    p = tmp_path / "ledger.bin"
    p.write_bytes(raw)
    with pytest.raises(LedgerError):
        load_ledger(p)
    with pytest.raises(LedgerError):
        load_export(raw)


@_FUZZ
@given(data=st.data())
def test_a_mutated_dp_event_is_refused_or_reads_back_identically(data):
    good = _event(3, 1.25).canonical_bytes()
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "field"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        bad = good[:i] + bytes([good[i] ^ (1 << data.draw(st.integers(0, 7)))]) + good[i + 1:]
    elif kind == "cut":
        bad = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "insert":
        i = data.draw(st.integers(0, len(good)))
        bad = good[:i] + data.draw(st.binary(min_size=1, max_size=8)) + good[i:]
    else:
        d = json.loads(good)
        key = data.draw(st.sampled_from(sorted(d)))
        d[key] = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=5),
                                     st.lists(st.integers(), max_size=2)))
        bad = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    try:
        ev = DpEvent.from_json(bad)
    except SecureFedError:  # InvalidMessage, or AccountingError for an unknown sampler/accountant
        return
    assert ev.canonical_bytes() == bad  # only an exactly canonical, valid event is accepted


@_FUZZ
@given(data=st.data())
def test_edits_that_would_hide_spent_budget_never_verify(export, data):
    """Raise one round's sigma (less epsilon), delete or reorder entries, swap signatures; even with
    the hash chain recomputed, verification fails. Nothing verified differs from the true history."""
    original, _ = export
    truth = _events_of(original)
    d = json.loads(json.dumps(original))
    entries = d["entries"]
    kind = data.draw(st.sampled_from(["raise-sigma", "delete", "swap", "resign-chain", "steal-signature"]))
    i = data.draw(st.integers(0, len(entries) - 1))
    if kind == "raise-sigma":
        ev = json.loads(entries[i]["event"])
        ev["noise_multiplier"] = ev["noise_multiplier"] * 10
        entries[i]["event"] = json.dumps(ev, sort_keys=True, separators=(",", ":"))
    elif kind == "delete":
        del entries[min(i, len(entries) - 2)]  # not the newest: tail truncation is the anchor's job (below)
    elif kind == "swap":
        j = (i + 1) % len(entries)
        entries[i], entries[j] = entries[j], entries[i]
    elif kind == "resign-chain":
        # edit, then recompute every hash downstream (the attacker cannot recompute the signatures)
        ev = json.loads(entries[i]["event"])
        ev["steps"] = 1
        entries[i]["event"] = json.dumps(ev, sort_keys=True, separators=(",", ":"))
        prev = entries[i]["prev_hash"]
        for e in entries[i:]:
            e["prev_hash"] = prev
            e["entry_hash"] = prev = entry_hash(prev, e["event"].encode())
    else:
        j = (i + 1) % len(entries)
        entries[i]["signature"] = entries[j]["signature"]
    with pytest.raises(LedgerError):
        verified = _events_of(d)
        assert verified == truth  # (unreachable unless the edit was a no-op)


def test_dropping_the_newest_entries_is_caught_against_the_reported_anchor(export):
    original, _ = export
    anchor_len = len(original["entries"])
    anchor_hash = original["entries"][-1]["entry_hash"]
    d = json.loads(json.dumps(original))
    del d["entries"][-2:]
    shorter = load_export(d)  # a shorter chain is still a valid chain ...
    eps_short = compute_epsilon(shorter.events, 1e-5, "rdp")
    assert eps_short < compute_epsilon(load_export(original).events, 1e-5, "rdp")
    from securefed.privacy.ledger import LedgerHead

    with pytest.raises(LedgerError, match="entries were removed"):
        check_head(shorter.entries, LedgerHead(anchor_len, anchor_hash))  # ... but not the anchored one


def test_a_sqlite_ledger_edited_behind_the_triggers_is_refused(export, tmp_path):
    """Write access to the file defeats SQLite's append-only triggers; the chain still catches it."""
    _, path = export
    copy = tmp_path / "edited.sqlite"
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy)
    conn.execute("DROP TRIGGER entries_append_only_u")
    row = conn.execute("SELECT event FROM entries WHERE seq = 2").fetchone()
    ev = json.loads(row[0])
    ev["noise_multiplier"] = 50.0
    conn.execute("UPDATE entries SET event = ? WHERE seq = 2", (json.dumps(ev, sort_keys=True, separators=(",", ":")),))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="entry 2"):
        load_ledger(copy)
    with pytest.raises(LedgerError):
        Ledger.open(copy)


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_deeply_nested_or_huge_event_json_is_an_invalid_message(depth):
    # Reaches the server from any certified client (ReportPrivacyEvent): must not blow the stack.
    from securefed.errors import InvalidMessage

    with pytest.raises(InvalidMessage):
        DpEvent.from_json("[" * depth + "]" * depth)
    with pytest.raises(InvalidMessage):
        DpEvent.from_json(b'{"a":"' + b"x" * 10**6 + b'"}')


@_FUZZ
@given(pos=st.integers(0, 10**7), bit=st.integers(0, 7))
def test_a_bit_flip_anywhere_in_the_sqlite_file_is_caught_or_harmless(export, tmp_path, pos, bit):
    _, path = export
    raw = bytearray(path.read_bytes())
    raw[pos % len(raw)] ^= 1 << bit
    p = tmp_path / "flipped.sqlite"
    p.write_bytes(bytes(raw))
    try:
        verified = load_ledger(p)
    except SecureFedError as exc:
        assert isinstance(exc, LedgerError), type(exc)
        return
    # A flip in free space or SQLite bookkeeping that leaves every signed byte intact is harmless.
    assert verified.events == load_ledger(path).events


def test_hostile_nesting_and_huge_numbers_are_typed_errors(tmp_path):
    """Deeply nested JSON/TOML and out-of-range numbers from disk or a peer: typed errors, no
    RecursionError/OverflowError (ledger exports and headers, configs, adapter layouts, CKKS requests)."""
    from securefed.config import StrictModel, load_toml
    from securefed.protocol.ckks import decode_request
    from securefed.training.adapter import AdapterLayout

    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(LedgerError):
        load_export(deep)
    p = tmp_path / "deep.toml"
    p.write_text("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(SecureFedError):
        load_toml(StrictModel, p)
    with pytest.raises(SecureFedError):
        AdapterLayout.from_json(deep)
    with pytest.raises(SecureFedError):
        decode_request([deep.encode()])
    huge = b'{"format":"securefed-ckks-sum/v2","contributors":[{"client":"a","sealed_tag":1e400,"signature":"00"}]}'
    with pytest.raises(SecureFedError):
        decode_request([huge, b"x", b"y"])
