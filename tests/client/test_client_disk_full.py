"""A member's state on a full disk (issue 19): recording the attempt it answers fails with one line
saying disk full (not an exit: the daemon goes on), the record is unchanged, and the storage guard
declines plans for a while instead of leaving the server to wait for a silent member."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import pytest

from securefed.client.member_state import MemberState
from securefed.client.storage_guard import StorageGuard
from securefed.errors import DiskWriteError


def test_recording_an_attempt_on_a_full_disk_says_so_and_changes_nothing(tmp_path):
    path = tmp_path / "member_state.sqlite"
    st = MemberState(path, "f" * 64)
    guard = StorageGuard(retry_s=60.0)
    try:
        st.act_on(3)
        wal = Path(f"{path}-wal")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # No file may grow now (the kernel refuses with EFBIG, as a full disk refuses with ENOSPC): only for
        # this one write, and put back at once (this process runs other tests).
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal.stat().st_size, hard))
        try:
            with pytest.raises(DiskWriteError) as err:
                st.act_on(4)
            wrote = guard.write(st.act_on, 5)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert str(err.value) == (
            f"{path}: write failed (a full disk, a file size limit or a failing disk) (disk I/O error): this member "
            "cannot record the attempts it answers, so it declines them until it can write again: free space there")
        assert not wrote and st.last_attempt() == 3  # nothing recorded, and no exception out of the guard
        reason = guard.decline_reason()
        assert reason is not None and reason.startswith("cannot write locally: ") and str(path) in reason
        st.act_on(6)  # room again: recorded
        assert st.last_attempt() == 6
    finally:
        st.close()


def test_the_guard_declines_only_for_a_while_and_logs_one_error_line(caplog):
    guard = StorageGuard(retry_s=0.0)
    assert guard.decline_reason() is None  # nothing failed: no reason to decline
    with caplog.at_level(logging.ERROR, logger="securefed"):
        guard.failed(DiskWriteError("/x/ledger.sqlite: disk full (database or disk is full): ..."), attempt=7)
    (rec,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert not rec.getMessage().startswith("ERROR")  # the level is said once, by the record
    assert guard.decline_reason() is None  # retry_s passed: it tries again
