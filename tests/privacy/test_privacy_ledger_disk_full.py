"""A member's privacy ledger on a full disk (issue 19): the append fails with one line that says
"disk full" and that nothing was released, never SQLite's "cannot rollback - no transaction is
active"; the chain is untouched, and once there is room the next entry appends and verifies."""

from __future__ import annotations

import sqlite3

import pytest
from privacy_helpers import make_event

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import DiskWriteError
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.ledger import Ledger, load_ledger


def test_an_append_on_a_full_disk_says_so_and_leaves_the_chain_whole(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = Ledger.create(path, IdentityKeyPair.generate(), client_id="hospital-a",
                        budget=PrivacyBudget(target_epsilon=8.0, delta=1e-5))
    try:
        led.append(make_event(round_id=1))
        conn: sqlite3.Connection = led._conn
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(DiskWriteError) as err:
            for r in range(2, 200):  # entries fill the last page, then one page more is refused
                led.append(make_event(round_id=r))
        msg = str(err.value)
        assert msg == (f"{path}: disk full (database or disk is full): nothing was released (the ledger entry comes "
                       "first); this member declines rounds until it can write again: free space there")
        assert "no transaction is active" not in msg
        n = len(led.entries())
        conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        led.append(make_event(round_id=1000))
        assert len(led.entries()) == n + 1
    finally:
        led.close()
    assert len(load_ledger(path).entries) == n + 1  # verified from disk: chain and signatures whole
