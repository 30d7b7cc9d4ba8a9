"""What the server's round log adds to an audit: the anchors it recorded, and for every attempt who
contributed, dropped out or declined.

``securefed audit report|verify --round-log state/rounds.sqlite`` reads the coordinator's SQLite round
log read-only. Its ledger heads and identity keys are the same anchors ``securefed status`` prints
(the server verified each reported entry under the member's certified key before keeping it); an
anchor given explicitly (``--expect-head``, ``--public-key``) takes precedence. The attempts give the
report its per-round columns: the members' own signed events say what each member did, the round
log says what the federation did around them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from securefed.errors import LedgerError, RoundLogError
from securefed.privacy.ledger import LedgerHead
from securefed.server.roundlog import RoundLog


@dataclass(frozen=True)
class AttemptView:
    attempt: int
    round: int
    status: str
    mode: str
    cohort: tuple[str, ...]
    contributors: tuple[str, ...]
    dropouts: tuple[str, ...]
    declined: dict[str, str]
    started_at: float
    finished_at: float | None

    def to_dict(self) -> dict:
        return {"attempt": self.attempt, "round": self.round, "status": self.status, "mode": self.mode,
                "cohort": list(self.cohort), "contributors": list(self.contributors), "dropouts": list(self.dropouts),
                "declined": dict(self.declined)}


@dataclass(frozen=True)
class RoundLogContext:
    source: str
    attempts: dict[int, AttemptView]
    heads: dict[str, LedgerHead]
    public_keys: dict[str, bytes]
    reported: dict[str, int]  # the exact signed event text the server recorded -> its attempt

    def attempt_of(self, event_bytes: bytes) -> AttemptView | None:
        """The attempt in which the server recorded exactly this signed event (None: never reported here)."""
        a = self.reported.get(event_bytes.decode("utf-8"))
        return self.attempts.get(a) if a is not None else None

    @property
    def completed_rounds(self) -> int:
        return sum(1 for a in self.attempts.values() if a.status == "completed")


def read_round_log(path: str | os.PathLike) -> RoundLogContext:
    """The round log at ``path`` (read-only; safe while the server runs)."""
    path = Path(path)
    try:
        log = RoundLog(path, readonly=True)
        try:
            attempts = log.attempts()
            heads = log.ledger_heads()
            keys = log.identity_keys()
            reported = {e.event: e.attempt for e in log.privacy_events()}
        finally:
            log.close()
    except (RoundLogError, OSError) as exc:
        raise LedgerError(f"--round-log {path}: {exc}") from None
    except Exception as exc:  # sqlite3.DatabaseError and kin: not a round log
        raise LedgerError(f"--round-log {path}: not a securefed round log ({type(exc).__name__})") from None
    views = {a.attempt: AttemptView(a.attempt, a.round, a.status.value, a.mode, tuple(a.cohort), tuple(a.survivors),
                                    tuple(a.dropouts), dict(a.declined), a.started_at, a.finished_at)
             for a in attempts}
    return RoundLogContext(str(path), views, {c: LedgerHead(n, h) for c, (n, h) in heads.items()},
                           {c: bytes.fromhex(k) for c, k in keys.items()}, reported)
