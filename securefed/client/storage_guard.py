"""A member whose disk refuses its writes (privacy ledger, member state) goes on, says so, and declines.

Nothing that needs a durable write is done without it: the ledger entry comes before a release, the
record of an attempt before the member answers it. When such a write fails (a full disk, a file size
limit: ``securefed.storage``) the member leaves that attempt with nothing released and logs one ERROR
line naming the file and what to do. For the next ``RETRY_S`` seconds it declines plans with
``PLAN_DECLINE_KIND_LOCAL_STORAGE`` rather than going silent (a silent member costs the others an
attempt), then tries again; the server leaves it out meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from securefed.errors import DiskWriteError
from securefed.logs import get_logger, log

logger = get_logger("client")

RETRY_S = 60.0


class StorageGuard:
    def __init__(self, retry_s: float = RETRY_S) -> None:
        self.retry_s = retry_s
        self.last: tuple[float, str] | None = None  # (monotonic time, message) of the last failed write

    def failed(self, exc: DiskWriteError, attempt: int | None = None) -> None:
        self.last = (time.monotonic(), str(exc))
        log(logger, "cannot write locally: left the attempt", level=logging.ERROR, attempt=attempt or None,
            error=str(exc))

    def write(self, fn: Callable[[int], None], attempt: int) -> bool:
        """``fn(attempt)``, a durable write; False (logged) when the disk refused it."""
        try:
            fn(attempt)
            return True
        except DiskWriteError as exc:
            self.failed(exc, attempt)
            return False

    def decline_reason(self) -> str | None:
        """Why to decline a plan now (a write failed less than ``retry_s`` ago), or None."""
        if self.last is None or time.monotonic() - self.last[0] >= self.retry_s:
            return None
        return f"cannot write locally: {self.last[1]}"
