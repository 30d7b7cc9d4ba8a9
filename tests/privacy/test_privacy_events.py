"""DpEvent: validation on construction, canonical bytes, strict parsing, sampler refusal."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from privacy_helpers import FIXED_TS, make_event

from securefed.errors import AccountingError, InvalidInput, InvalidMessage
from securefed.privacy import events as events_mod
from securefed.privacy.events import (
    AccountantName,
    DpEvent,
    LibraryVersions,
    Sampler,
    canonical_json,
    event_from_training,
)


def test_event_is_frozen_and_normalised():
    e = make_event(noise_multiplier=2, accountant="prv")
    assert isinstance(e.noise_multiplier, float) and e.noise_multiplier == 2.0
    assert e.accountant is AccountantName.PRV and e.sampler is Sampler.POISSON
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.steps = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("sample_rate", 1.01, "sample_rate"),
        ("sample_rate", -0.1, "sample_rate"),
        ("noise_multiplier", -1.0, "noise_multiplier"),
        ("noise_multiplier", float("nan"), "noise_multiplier"),
        ("noise_multiplier", float("inf"), "noise_multiplier"),
        ("steps", -1, "steps"),
        ("steps", 2.5, "steps"),
        ("steps", True, "steps"),
        ("round_id", -3, "round_id"),
        ("delta", 0.0, "delta"),
        ("delta", 1.0, "delta"),
        ("clip_norm", 0.0, "clip_norm"),
        ("client_id", "", "client_id"),
        ("client_id", "bad id with spaces", "client_id"),
        ("config_hash", "AB" * 32, "config_hash"),
        ("config_hash", "ab" * 31, "config_hash"),
        ("secure_rng", 1, "secure_rng"),
        ("timestamp", "2026-11-28 05:00:00", "timestamp"),
    ],
)
def test_invalid_fields_are_refused(field, value, match):
    with pytest.raises(InvalidInput, match=match):
        make_event(**{field: value})


@pytest.mark.parametrize("sampler", ["shuffle", "fixed_size", Sampler.SHUFFLE, "uniform"])
def test_only_poisson_sampling_is_accepted(sampler):
    with pytest.raises(AccountingError, match="Poisson"):
        make_event(sampler=sampler)


def test_unknown_accountant_is_refused():
    with pytest.raises(AccountingError, match="unknown accountant"):
        make_event(accountant="moments")


def test_edge_values_are_valid():
    assert make_event(sample_rate=0.0, steps=0, noise_multiplier=0.0).steps == 0
    assert make_event(sample_rate=1.0).sample_rate == 1.0


def test_canonical_bytes_roundtrip_and_key_set():
    e = make_event(noise_multiplier=0.1 + 0.2)  # a float whose repr is long
    raw = e.canonical_bytes()
    assert raw == canonical_json(json.loads(raw))
    back = DpEvent.from_json(raw)
    assert back == e and back.noise_multiplier == 0.1 + 0.2
    assert set(e.to_dict()) == events_mod._EVENT_KEYS
    assert b" " not in raw and raw.index(b'"accountant"') < raw.index(b'"client_id"')  # sorted, compact


def test_non_canonical_or_extended_json_is_refused():
    d = make_event().to_dict()
    pretty = json.dumps(d, indent=2)
    with pytest.raises(InvalidMessage, match="canonical"):
        DpEvent.from_json(pretty)
    with pytest.raises(InvalidMessage, match="unexpected"):
        DpEvent.from_dict({**d, "epsilon": 1.0})  # epsilon is never stored in an event
    missing = dict(d)
    del missing["steps"]
    with pytest.raises(InvalidMessage, match="missing"):
        DpEvent.from_dict(missing)
    with pytest.raises(InvalidMessage, match="invalid DP event"):
        DpEvent.from_dict({**d, "sample_rate": 2.0})
    with pytest.raises(InvalidMessage):
        DpEvent.from_json(b"\xff\xfe")
    with pytest.raises(InvalidMessage, match="schema"):
        DpEvent.from_dict({**d, "schema": 99})
    with pytest.raises(InvalidMessage, match="larger than"):
        DpEvent.from_json(b"[" * 20000)
    with pytest.raises(InvalidMessage, match="not valid JSON"):
        DpEvent.from_json(b"[" * 5000 + b"]" * 5000)  # nesting deep enough to blow the recursion limit
    with pytest.raises(InvalidMessage):
        DpEvent.from_json(make_event().canonical_bytes().replace(b"1.5", b"NaN"))


def test_from_dict_with_non_poisson_sampler_is_an_accounting_error():
    d = make_event().to_dict()
    with pytest.raises(AccountingError):
        DpEvent.from_dict({**d, "sampler": "shuffle"})


def test_library_versions_current_reads_metadata_without_importing_torch():
    import subprocess
    import sys

    v = LibraryVersions.current()
    assert v.securefed == "0.1.0" and v.opacus.startswith("1.") and v.torch
    code = (
        "import sys\n"
        "import securefed.privacy.events, securefed.privacy.accountants, securefed.privacy.budget, "
        "securefed.privacy.ledger, securefed.privacy.cli, securefed.privacy.audit_cli\n"
        "securefed.privacy.events.LibraryVersions.current()\n"
        "heavy = [m for m in ('torch', 'opacus', 'dp_accounting') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_event_from_training_result():
    result = SimpleNamespace(steps=120, sample_rate=0.01, noise_multiplier=1.1, clip_norm=0.5, secure_rng=False,
                             clipping_mode="ghost", num_samples=800)
    e = event_from_training(result, client_id="c-1", round_id=4, delta=1e-4, accountant="rdp",
                            config_hash="cd" * 32, timestamp=FIXED_TS)
    assert (e.steps, e.sample_rate, e.noise_multiplier, e.clip_norm, e.secure_rng) == (120, 0.01, 1.1, 0.5, False)
    assert e.round_id == 4 and e.client_id == "c-1"
    with pytest.raises(InvalidInput, match="noise_multiplier"):
        event_from_training(SimpleNamespace(steps=1, sample_rate=0.1, clip_norm=1.0, secure_rng=True),
                            client_id="c", round_id=0, delta=1e-5, accountant="rdp", config_hash="cd" * 32)
    shuffled = SimpleNamespace(**{**vars(result), "sampler": "shuffle"})
    with pytest.raises(AccountingError):
        event_from_training(shuffled, client_id="c", round_id=0, delta=1e-5, accountant="rdp", config_hash="cd" * 32)


# ----------------------------------------------------------------------------- library versions (schema 3)

FULL_VERSIONS = LibraryVersions(opacus="1.6.0", torch="2.13.0+cpu", securefed="0.1.0", transformers="5.25.0",
                                peft="0.21.2", bitsandbytes="0.50.2", tenseal="0.3.18")


def test_a_release_records_every_numerics_library_and_old_events_keep_their_bytes():
    from privacy_helpers import make_context

    from securefed import versions

    current = LibraryVersions.current()
    assert current.complete and set(current.to_dict()) == {"securefed", *versions.NUMERICS_LIBRARIES}
    new = make_event(library_versions=FULL_VERSIONS, context=make_context())
    assert new.to_dict()["schema"] == 3 and new.to_dict()["library_versions"]["peft"] == "0.21.2"
    assert DpEvent.from_json(new.canonical_bytes()) == new
    bare = make_event(library_versions=FULL_VERSIONS)  # schema 3 without context
    assert DpEvent.from_json(bare.canonical_bytes()) == bare
    # Known-answer bytes of a schema 2 event (what ledgers before schema 3 hold, hashed and signed):
    old = make_event(context=make_context())
    assert old.to_dict()["schema"] == 2
    assert old.canonical_bytes().startswith(b'{"accountant":"rdp","client_id":"hospital-a","clip_norm":1.0,'
                                            b'"config_hash":"abab')
    assert b'"library_versions":{"opacus":"1.6.0","securefed":"0.1.0","torch":"2.13.0"}' in old.canonical_bytes()
    assert DpEvent.from_json(old.canonical_bytes()) == old


def test_library_version_sets_must_match_their_schema():
    with pytest.raises(InvalidInput, match="library_versions"):
        LibraryVersions(opacus="1", torch="2", securefed="0", transformers="5")  # a partial set
    d = make_event(library_versions=FULL_VERSIONS).to_dict()
    with pytest.raises(InvalidMessage, match="library_versions"):
        DpEvent.from_dict({**d, "schema": 1})  # the full set under an older schema
    legacy = make_event().to_dict()
    with pytest.raises(InvalidMessage, match="library_versions"):
        DpEvent.from_dict({**legacy, "schema": 3})  # schema 3 claims the full set
