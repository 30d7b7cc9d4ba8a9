"""One budget per dataset: event context, ledgers bound to a dataset, the salted fingerprint, and the
member's ledgers of one dataset counted together (across federations and reissued identity keys)."""

from __future__ import annotations

import json
import stat

import pytest
from privacy_helpers import DATASET_A, DATASET_B, make_context, make_event

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import InvalidMessage, LedgerError
from securefed.privacy import dataset as ds
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.events import DpEvent
from securefed.privacy.ledger import LEDGER_VERSION, LEGACY_LEDGER_VERSION, Ledger, load_ledger

BUDGET = PrivacyBudget(target_epsilon=8.0, delta=1e-5)
CID = "hospital-a"


def test_context_round_trips_and_old_events_keep_their_exact_bytes():
    e = make_event(context=make_context())
    assert DpEvent.from_json(e.canonical_bytes()) == e
    assert json.loads(e.canonical_bytes())["schema"] == 2
    old = make_event()
    raw = old.canonical_bytes()
    assert json.loads(raw)["schema"] == 1 and "context" not in json.loads(raw)  # what old ledgers hold, unchanged
    assert DpEvent.from_json(raw) == old
    bad = json.loads(e.canonical_bytes())
    del bad["context"]
    with pytest.raises(InvalidMessage, match="missing"):
        DpEvent.from_dict(bad)  # schema 2 without its context is not an old event
    bad = json.loads(e.canonical_bytes())
    bad["context"]["dataset_size"] = 0
    with pytest.raises(InvalidMessage, match="dataset_size"):
        DpEvent.from_dict(bad)


def test_a_v2_ledger_holds_only_its_datasets_events(tmp_path):
    ident = IdentityKeyPair.generate()
    with Ledger.create(tmp_path / "l.sqlite", ident, client_id=CID, budget=BUDGET, dataset=DATASET_A) as led:
        led.append(make_event(round_id=1, context=make_context()))
        with pytest.raises(LedgerError, match="one ledger per dataset"):
            led.append(make_event(round_id=2, context=make_context(dataset_fingerprint=DATASET_B)))
        with pytest.raises(LedgerError, match="names no dataset"):
            led.append(make_event(round_id=3))
    v = load_ledger(tmp_path / "l.sqlite")
    assert v.header.version == LEDGER_VERSION and v.header.dataset == DATASET_A and len(v.entries) == 1
    with pytest.raises(LedgerError, match="accounts for dataset"):
        Ledger.open_or_create(tmp_path / "l.sqlite", ident, client_id=CID, budget=BUDGET, dataset=DATASET_B)


def test_a_v1_ledger_stays_readable_and_takes_context_of_one_dataset(tmp_path):
    ident = IdentityKeyPair.generate()
    with Ledger.create(tmp_path / "old.sqlite", ident, client_id=CID, budget=BUDGET) as led:  # format 1
        led.append(make_event(round_id=0))
    with Ledger.open_or_create(tmp_path / "old.sqlite", ident, client_id=CID, budget=BUDGET, dataset=DATASET_A) as led:
        assert led.header.version == LEGACY_LEDGER_VERSION and led.dataset is None
        led.append(make_event(round_id=1, context=make_context()))
        assert led.dataset == DATASET_A
        with pytest.raises(LedgerError, match="one ledger per dataset"):
            led.append(make_event(round_id=2, context=make_context(dataset_fingerprint=DATASET_B)))
    assert len(load_ledger(tmp_path / "old.sqlite").entries) == 2


def test_fingerprint_ignores_order_and_formatting_and_is_salted(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text('{"text": "one"}\n{"text": "two"}\n')
    b = tmp_path / "b.jsonl"
    b.write_text('{"text":"two"}\n\n{ "text" : "one" }\n')
    c = tmp_path / "c.jsonl"
    c.write_text('{"text": "one"}\n{"text": "two!"}\n')
    salt = ds.load_salt(tmp_path / "ledgers")
    assert stat.S_IMODE((tmp_path / "ledgers" / ds.SALT_FILE).stat().st_mode) == 0o600
    assert ds.load_salt(tmp_path / "ledgers") == salt  # created once, then kept
    fa, fb, fc = (ds.fingerprint(ds.jsonl_record_digests(p), salt) for p in (a, b, c))
    assert fa == fb and fa != fc
    # Without the member's salt nobody can test a guess of the records against the fingerprint.
    assert ds.fingerprint(ds.jsonl_record_digests(a), b"\x00" * 32) != fa


def test_dataset_ledgers_count_every_ledger_of_the_dataset(tmp_path):
    d = tmp_path / "ledgers"
    first = IdentityKeyPair.generate()
    with ds.DatasetLedgers.open(d, first, client_id=CID, budget=BUDGET, dataset=DATASET_A) as led:
        led.append(make_event(round_id=1, context=make_context(federation_id="fed-one")))
    # The same member, another federation, same data and key: the same ledger file.
    with ds.DatasetLedgers.open(d, first, client_id=CID, budget=BUDGET, dataset=DATASET_A) as led:
        assert len(led.events()) == 1
        led.append(make_event(round_id=1, context=make_context(federation_id="fed-two")))
        spent_one_key = led.epsilon()
    # Its certificate reissued (a new identity key): a second file, and the spend of the first counts.
    second = IdentityKeyPair.generate()
    with ds.DatasetLedgers.open(d, second, client_id=CID, budget=BUDGET, dataset=DATASET_A) as led:
        assert len(led.events()) == 2 and led.epsilon() == pytest.approx(spent_one_key)
        assert len(led.entries()) == 0 and ".key-" in led.path.name and led.earlier_files
        led.append(make_event(round_id=5, context=make_context(federation_id="fed-three")))
        assert led.epsilon() > spent_one_key
    # Other data: another ledger, nothing counted from this one.
    with ds.DatasetLedgers.open(d, first, client_id=CID, budget=BUDGET, dataset=DATASET_B) as led:
        assert led.events() == ()
    assert sorted(p.name.split(".")[0] for p in d.glob("*.sqlite")) == [
        f"dataset-{DATASET_A[:16]}", f"dataset-{DATASET_A[:16]}", f"dataset-{DATASET_B[:16]}"]


def test_a_tampered_ledger_of_the_dataset_stops_the_member(tmp_path):
    d = tmp_path / "ledgers"
    ident = IdentityKeyPair.generate()
    with ds.DatasetLedgers.open(d, ident, client_id=CID, budget=BUDGET, dataset=DATASET_A) as led:
        led.append(make_event(round_id=1, context=make_context()))
        path = led.path
    raw = bytearray(path.read_bytes())
    i = raw.find(b'"steps":225')
    raw[i + 8] = ord("1")
    path.write_bytes(bytes(raw))
    with pytest.raises(LedgerError):
        ds.DatasetLedgers.open(d, IdentityKeyPair.generate(), client_id=CID, budget=BUDGET, dataset=DATASET_A)
