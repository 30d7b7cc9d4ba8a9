"""What a member remembers of each federation across restarts, in one SQLite file (crash-safe).

* the highest attempt id it acted on (answered a plan for): a plan for an attempt that is not newer is a
  replay and is refused, so no plan can make it train and release twice, across sessions and restarts;
* the highest federation round it saw complete (announced by the server: it moves the member's view of
  the federation on, but nothing it guards);
* every SecAgg+ session it joined, when (its own wall clock), whether its masked input left, and whether
  it finished the session (answered the unmask request after checking t survivors' signatures): the
  graph-grinding guard counts sessions that ended before release since the later of the last finished
  session and one window ago. Nothing the server sends alone resets it: not an attempt id, a nudged
  global adapter, nor a "completed round" it announces (issue 17);
* the one CKKS contributor set it confirmed per attempt.

A federation is named by the SHA-256 of the CA certificate the member pins (its own configuration, not a
value the server sends). Writes are single transactions (WAL, ``synchronous=FULL``): a crash leaves the
state before or after an update, and an update is on disk before the member acts on it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

from securefed.errors import ProtocolAbort, ReplayedMessage, StateError
from securefed.storage import MEMBER_STATE_DISK_FULL, disk_write_error

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (federation TEXT PRIMARY KEY, last_attempt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (federation TEXT PRIMARY KEY, last_round INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS graph_sessions (
    federation TEXT NOT NULL, attempt INTEGER NOT NULL, joined_at REAL NOT NULL, released INTEGER NOT NULL,
    finished_at REAL, PRIMARY KEY (federation, attempt));
CREATE TABLE IF NOT EXISTS ckks_confirmations (
    federation TEXT NOT NULL, attempt INTEGER NOT NULL, request_sha256 BLOB NOT NULL,
    PRIMARY KEY (federation, attempt));
"""


def federation_key(ca_der: bytes) -> str:
    """The name of a federation for this member: SHA-256 of the CA certificate it pins (hex)."""
    return hashlib.sha256(bytes(ca_der)).hexdigest()


class MemberState:
    """One member's durable per-federation state (see the module docstring). Thread-safe."""

    def __init__(self, path: Path | str, federation: str) -> None:
        self.path, self.federation = path, federation
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=10, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"{path}: member state unreadable ({exc}); move it aside only if this member "
                             "never joined a round (it guards against replayed plans)") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, *args) -> int | None:
        row = self._db.execute(sql, (self.federation, *args)).fetchone()
        return None if row is None else row[0]

    def _write(self, *statements: tuple[str, tuple]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise disk_write_error(exc, self.path, MEMBER_STATE_DISK_FULL) or StateError(
                f"{self.path}: cannot record member state ({exc})") from None

    # --- attempts ---------------------------------------------------------------------------------
    def last_attempt(self) -> int:
        """The highest attempt id this member acted on in this federation (0: none)."""
        with self._lock:
            return self._one("SELECT last_attempt FROM attempts WHERE federation = ?") or 0

    def act_on(self, attempt: int) -> None:
        """Record, durably, that this member now answers ``attempt``; ``ReplayedMessage`` unless it is newer
        than every attempt it answered before."""
        with self._lock:
            last = self._one("SELECT last_attempt FROM attempts WHERE federation = ?") or 0
            if attempt <= last:
                raise ReplayedMessage(f"plan for attempt {attempt} refused: this member already acted on attempt "
                                      f"{last} of this federation (a replayed or reordered plan)")
            self._write(("INSERT INTO attempts VALUES (?, ?) ON CONFLICT(federation) DO UPDATE SET "
                         "last_attempt = excluded.last_attempt", (self.federation, attempt)))

    # --- federation rounds and the graph-grinding guard -------------------------------------------
    def federation_round(self) -> int:
        """The highest round this member saw completed (-1: none yet)."""
        with self._lock:
            r = self._one("SELECT last_round FROM rounds WHERE federation = ?")
            return -1 if r is None else r

    def round_completed(self, rnd: int) -> None:
        """A completed round was announced (the max is kept: an older or repeated round changes nothing)."""
        with self._lock:
            self._write(("INSERT INTO rounds VALUES (?, ?) ON CONFLICT(federation) DO UPDATE SET "
                         "last_round = MAX(last_round, excluded.last_round)", (self.federation, rnd)))

    def sparse_joined(self, attempt: int, now: float) -> None:
        """A SecAgg+ session of ``attempt`` got this member's round keys, at wall-clock time ``now``."""
        with self._lock:
            self._write(("INSERT OR IGNORE INTO graph_sessions VALUES (?, ?, ?, 0, NULL)",
                         (self.federation, attempt, now)))

    def sparse_released(self, attempt: int) -> None:
        with self._lock:
            self._write(("UPDATE graph_sessions SET released = 1 WHERE federation = ? AND attempt = ?",
                         (self.federation, attempt)))

    def session_finished(self, attempt: int, now: float) -> None:
        """This member answered the unmask request of ``attempt``: t survivors signed the list it signed."""
        with self._lock:
            self._write(("INSERT INTO graph_sessions VALUES (?, ?, ?, 1, ?) ON CONFLICT(federation, attempt) "
                         "DO UPDATE SET released = 1, finished_at = excluded.finished_at",
                         (self.federation, attempt, now, now)))

    def sparse_unreleased(self, window_s: float, now: float) -> int:
        """SecAgg+ sessions that ended before this member's release, joined after both its last finished
        session and ``now - window_s``."""
        with self._lock:
            last = self._one("SELECT MAX(finished_at) FROM graph_sessions WHERE federation = ?")
            since = max(now - window_s, last if last is not None else float("-inf"))
            return self._one("SELECT COUNT(*) FROM graph_sessions WHERE federation = ? AND released = 0 AND "
                             "joined_at >= ?", since) or 0

    # --- CKKS -------------------------------------------------------------------------------------
    def confirm_once(self, attempt: int, request_sha256: bytes) -> None:
        """Record the one contributor set this member confirms in ``attempt``; ``ProtocolAbort`` if it
        confirmed another one before (in any session, before any restart)."""
        with self._lock:
            row = self._db.execute("SELECT request_sha256 FROM ckks_confirmations WHERE federation = ? AND "
                                   "attempt = ?", (self.federation, attempt)).fetchone()
            if row is not None:
                if bytes(row[0]) != bytes(request_sha256):
                    raise ProtocolAbort(f"a second contributor set in attempt {attempt}: refused (one per attempt)")
                return
            self._write(("INSERT INTO ckks_confirmations VALUES (?, ?, ?)",
                         (self.federation, attempt, bytes(request_sha256))))
