"""A full disk, said in one line, where each daemon writes what must survive (issue 19): the server's
round log, a member's privacy ledger, a member's state. SQLite's own limit (``max_page_count``) gives
the exact error a full disk gives (``SQLITE_FULL``, "database or disk is full"); the kernel's file
size limit gives ``EFBIG``. Nothing is half-written: once there is room again, the next write works
and the chain verifies."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from securefed.errors import DiskWriteError
from securefed.server.roundlog import RoundLog
from securefed.storage import write_failure


def fill(conn: sqlite3.Connection) -> None:
    """The database may not grow by one page more: what a full disk does to SQLite."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def room(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA max_page_count = 1073741823")


def test_write_failures_are_told_apart_from_other_errors():
    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) == "disk full"
    assert write_failure(OSError(errno.EFBIG, "File too large")) == "file size limit reached"
    assert write_failure(OSError(errno.ENOENT, "No such file")) is None  # not a full disk
    assert write_failure(sqlite3.OperationalError("database is locked")) is None


def test_the_servers_round_log_on_a_full_disk_is_one_line_and_nothing_half_done(tmp_path):
    log = RoundLog(tmp_path / "rounds.sqlite")
    try:
        log.begin_attempt(round=1, mode="secagg", base_hash="00" * 32, stage="plan")
        fill(log._db)
        with pytest.raises(DiskWriteError) as err:
            for i in range(200):  # each update grows the log until one page more is refused
                log.update_attempt(1, declined={f"member-{i}-{j}": "x" * 200 for j in range(20)})
        msg = str(err.value)
        assert msg == (f"{tmp_path / 'rounds.sqlite'}: disk full (database or disk is full): the server stops without "
                       "ending the federation (members wait for it): free space there; started again, it resumes "
                       "from the last completed round")
        assert "cannot rollback" not in msg and "\n" not in msg
        room(log._db)
        log.complete_attempt(1, result_hash="ab" * 32, checkpoint="c")  # consistent, and writable again
        assert log.completed_rounds() == 1
    finally:
        log.close()
