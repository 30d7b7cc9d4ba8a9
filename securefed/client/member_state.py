"""What a member remembers of each federation across restarts, in one SQLite file (crash-safe).

* the highest attempt id it acted on (answered a plan for): a plan for an attempt that is not newer is a
  replay and is refused, so no plan can make it train and release twice, across sessions and restarts;
* the highest federation round it saw complete, and the SecAgg+ sessions it joined in each such round
  that ended before its release (the graph-grinding guard counts those; neither the attempt id nor the
  global adapter's digest, which the server chooses freely, resets the count);
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
CREATE TABLE IF NOT EXISTS sparse_sessions (
    federation TEXT NOT NULL, fed_round INTEGER NOT NULL, attempt INTEGER NOT NULL, released INTEGER NOT NULL,
    PRIMARY KEY (federation, attempt));
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

    def sparse_joined(self, attempt: int) -> None:
        """A SecAgg+ session of ``attempt`` got this member's round keys (in the current federation round)."""
        fed_round = self.federation_round()
        with self._lock:
            self._write(("INSERT OR IGNORE INTO sparse_sessions VALUES (?, ?, ?, 0)",
                         (self.federation, fed_round, attempt)))

    def sparse_released(self, attempt: int) -> None:
        with self._lock:
            self._write(("UPDATE sparse_sessions SET released = 1 WHERE federation = ? AND attempt = ?",
                         (self.federation, attempt)))

    def sparse_unreleased(self) -> int:
        """SecAgg+ sessions joined in the current federation round that ended before this member's release."""
        fed_round = self.federation_round()
        with self._lock:
            return self._one("SELECT COUNT(*) FROM sparse_sessions WHERE federation = ? AND fed_round = ? AND "
                             "released = 0", fed_round) or 0

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
