"""Hostile nesting and corrupt text in local files and decoders: always the typed error, never a traceback.

Regression tests for the gaps the adversarial suite found (threat_models/durability.md): deeply nested
JSON/TOML gave RecursionError, a huge number gave OverflowError, a corrupted schema gave UnicodeDecodeError.
"""

from __future__ import annotations

import sqlite3

import pytest

from securefed.config import StrictModel, load_toml
from securefed.errors import ConfigError, InvalidInput, InvalidMessage, LedgerError

DEEP_JSON = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_toml_is_a_config_error(tmp_path):
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(StrictModel, p)


def test_deeply_nested_ledger_export_is_a_ledger_error():
    from securefed.privacy.ledger import load_export

    with pytest.raises(LedgerError, match="not valid JSON"):
        load_export(DEEP_JSON)


def test_deeply_nested_ledger_header_is_a_ledger_error():
    from securefed.privacy.ledger import parse_header

    with pytest.raises(LedgerError, match="malformed"):
        parse_header(DEEP_JSON, "00" * 32, "00" * 64)


def test_deeply_nested_or_overflowing_adapter_layout_is_invalid_input():
    from securefed.training.adapter import AdapterLayout

    with pytest.raises(InvalidInput):
        AdapterLayout.from_json(DEEP_JSON)
    with pytest.raises(InvalidInput):
        AdapterLayout.from_json('{"version": 1, "tensors": [{"name": "a", "shape": [1e400], "dtype": "float32"}]}')


def test_hostile_ckks_decryption_request_manifest_is_invalid_message():
    from securefed.protocol.ckks import MANIFEST_FORMAT, decode_request

    with pytest.raises(InvalidMessage):
        decode_request([DEEP_JSON.encode()])
    manifest = ('{"format": "%s", "contributors": [{"client": "a", "signature": "00", "c0_sha256": 1e400}]}'
                % MANIFEST_FORMAT)
    with pytest.raises(InvalidMessage):
        decode_request([manifest.encode(), b"x", b"y"])


def test_undecodable_text_in_a_ledger_file_is_a_ledger_error(tmp_path):
    from securefed.privacy.ledger import Ledger

    p = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE header (id INTEGER, body TEXT, header_hash TEXT, signature TEXT)")
    conn.execute("CREATE TABLE entries (seq INTEGER, event TEXT, prev_hash TEXT, entry_hash TEXT, signature TEXT)")
    conn.execute("INSERT INTO header VALUES (0, CAST(x'fffe80' AS TEXT), 'a', 'b')")  # not UTF-8
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError):
        Ledger.open(p)


def test_a_corrupted_byte_in_the_ledger_schema_is_a_ledger_error(tmp_path):
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.privacy.budget import PrivacyBudget
    from securefed.privacy.ledger import Ledger

    p = tmp_path / "ledger.sqlite"
    Ledger.create(p, IdentityKeyPair.generate(), client_id="c", budget=PrivacyBudget(target_epsilon=1, delta=1e-6)).close()
    raw = bytearray(p.read_bytes())
    at = raw.index(b"CREATE TABLE")
    raw[at + 2] = 0xFF  # the schema text in sqlite_master is no longer UTF-8
    p.write_bytes(bytes(raw))
    for read_only in (True, False):
        with pytest.raises(LedgerError):
            Ledger.open(p, None if read_only else IdentityKeyPair.generate())
