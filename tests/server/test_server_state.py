"""The coordinator's durable state: the SQLite round log and the checkpoint store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from securefed.errors import CheckpointError, LedgerConflict, RoundLogError
from securefed.protocol.bundle import adapter_digest, decode_bundle
from securefed.server.checkpoint import CheckpointStore
from securefed.server.roundlog import AttemptStatus, RoundLog

KIT = Path(__file__).resolve().parents[2] / "clients"


def test_roundlog_allows_one_completion_per_round_and_recovers(tmp_path):
    log = RoundLog(tmp_path / "r.sqlite")
    a1 = log.begin_attempt(round=1, mode="secagg", base_hash="00", stage="plan")
    with pytest.raises(RoundLogError, match="already running"):
        log.begin_attempt(round=1, mode="secagg", base_hash="00", stage="plan")
    log.complete_attempt(a1, result_hash="aa", checkpoint="c1")
    a2 = log.begin_attempt(round=1, mode="secagg", base_hash="00", stage="plan")
    assert a2 > a1
    # The database itself refuses a second completion of round 1 (an update applied twice).
    with pytest.raises(RoundLogError, match="already completed"):
        log.complete_attempt(a2, result_hash="bb", checkpoint="c1b")
    log.abort_attempt(a2, reason="test")
    a3 = log.begin_attempt(round=2, mode="secagg", base_hash="aa", stage="plan")
    log.close()
    # A crash leaves a3 running; reopening recovers it as abandoned, never reusing its id.
    log = RoundLog(tmp_path / "r.sqlite")
    assert log.recover() == [a3]
    st = {a.attempt: a.status for a in log.attempts()}
    assert st == {a1: AttemptStatus.COMPLETED, a2: AttemptStatus.ABORTED, a3: AttemptStatus.ABANDONED}
    a4 = log.begin_attempt(round=2, mode="secagg", base_hash="aa", stage="plan")
    assert a4 > a3 and log.last_completed().attempt == a1
    assert log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=0, entry_hash="e0") is True
    assert log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=0, entry_hash="e0") is False
    # A forked or rewritten ledger is refused: another hash at a known position, or a broken link.
    with pytest.raises(LedgerConflict, match="differs"):
        log.record_privacy_event(a4 + 1, "x", "{}", b"s", ledger_seq=0, entry_hash="other")
    with pytest.raises(LedgerConflict, match="chain"):
        log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=1, entry_hash="e1", prev_hash="not-e0")
    assert log.record_privacy_event(a4, "x", "{}", b"s", ledger_seq=1, entry_hash="e1", prev_hash="e0") is False
    assert log.record_privacy_event(a4 + 1, "x", "{}", b"s", ledger_seq=1, entry_hash="e1", prev_hash="e0") is True
    assert log.ledger_heads() == {"x": (2, "e1")}
    log.close()
    ro = RoundLog(tmp_path / "r.sqlite", readonly=True)
    assert ro.completed_rounds() == 1 and len(ro.privacy_events("x")) == 2
    ro.close()


def test_checkpoint_roundtrip_tamper_and_orphans(tmp_path):
    store = CheckpointStore(tmp_path)
    v = np.linspace(-1, 1, 33, dtype=np.float32)
    c = store.save(3, v, '{"layout":1}', '{"s":1}', server_state=np.ones(4, np.float32))
    got = store.load(3, expected_digest=c.digest)
    assert np.array_equal(got.vector, v) and got.settings == {"s": 1} and np.array_equal(got.server_state, np.ones(4))
    # The digest binds the settings too: the same vector under other settings is another bundle.
    assert adapter_digest(v, '{"layout":1}', '{"s":2}', np.ones(4, np.float32)) != c.digest
    raw = bytearray(c.path.read_bytes())
    raw[-3] ^= 0x40
    with pytest.raises(CheckpointError, match="digest"):
        decode_bundle(bytes(raw))
    with pytest.raises(CheckpointError, match="round log"):
        store.load(3, expected_digest="0" * 64)
    store.save(4, v, "{}")
    assert [p.name for p in store.discard_after(3)] == ["global-r000004.safetensors"]
    assert not list(tmp_path.glob(".*tmp*"))
