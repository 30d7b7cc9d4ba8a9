"""Local writes that fail (a full disk, a file size limit, a failing disk), said in one line.

SQLite reports a full disk as ``SQLITE_FULL`` ("database or disk is full") and a write the kernel
refused otherwise (``EFBIG`` past a file size limit, ``EIO``) as ``SQLITE_IOERR_*`` ("disk I/O
error"); a file write raises ``OSError`` with its errno. Each daemon turns these into one
``DiskWriteError`` naming the file, what it means there and what to do, instead of a traceback or a
later error about a transaction that SQLite already rolled back.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from securefed.errors import DiskWriteError

# What a failed write of the server's state means, in its one line (and what to do).
STATE_DISK_FULL = ("the server stops without ending the federation (members wait for it): free space there; "
                   "started again, it resumes from the last completed round")

# ... and of a member's privacy ledger and state: nothing is released without them.
LEDGER_DISK_FULL = ("nothing was released (the ledger entry comes first); this member declines rounds until it can "
                    "write again: free space there")
MEMBER_STATE_DISK_FULL = ("this member cannot record the attempts it answers, so it declines them until it can "
                          "write again: free space there")

_FULL_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}


def write_failure(exc: BaseException) -> str | None:
    """What kind of failed write ``exc`` is ("disk full", ...), or None when it is no write failure
    (a locked or corrupt database, a bug)."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name == "SQLITE_FULL":
            return "disk full"
        if name.startswith("SQLITE_IOERR"):
            return "write failed (a full disk, a file size limit or a failing disk)"
        return None
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return _FULL_ERRNOS[exc.errno]
        if exc.errno in (errno.EIO, errno.EROFS):
            return exc.strerror or "write failed"
    return None


def disk_write_error(exc: BaseException, path: Path | str, what: str) -> DiskWriteError | None:
    """The one-line ``DiskWriteError`` for a failed write of ``what`` at ``path``, or None when ``exc``
    is not a failed write. ``what`` finishes the sentence: what was not done, what to do."""
    kind = write_failure(exc)
    if kind is None:
        return None
    detail = getattr(exc, "strerror", None) or str(exc)
    return DiskWriteError(f"{path}: {kind} ({detail}): {what}")
