"""The coordinator's round log: SQLite, one transaction per state change, survives ``kill -9``.

Each *attempt* (one run of the protocol with one session) gets a row with a never-reused id
(AUTOINCREMENT). ``round`` is the global-adapter version the attempt would produce. A partial unique
index allows at most one ``completed`` attempt per round, so the database itself refuses to apply a
round's update twice, whatever the coordinator does after a crash.

On restart ``recover()`` marks every ``running`` attempt ``abandoned``: its session keys and masks are
never reused (a fresh attempt gets a fresh session), and its aggregate, if any was computed, was
never committed.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from securefed.errors import LedgerConflict, RoundLogError
from securefed.storage import STATE_DISK_FULL, disk_write_error

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    attempt      INTEGER PRIMARY KEY AUTOINCREMENT,
    round        INTEGER NOT NULL,
    status       TEXT NOT NULL,
    stage        TEXT NOT NULL,
    mode         TEXT NOT NULL,
    session_id   TEXT,
    base_hash    TEXT NOT NULL,
    result_hash  TEXT,
    checkpoint   TEXT,
    cohort       TEXT NOT NULL DEFAULT '[]',
    survivors    TEXT NOT NULL DEFAULT '[]',
    dropouts     TEXT NOT NULL DEFAULT '[]',
    declined     TEXT NOT NULL DEFAULT '{}',
    timings      TEXT NOT NULL DEFAULT '{}',
    bytes_in     INTEGER NOT NULL DEFAULT 0,
    bytes_out    INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    started_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    finished_at  REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_completion_per_round ON attempts(round) WHERE status = 'completed';
CREATE TABLE IF NOT EXISTS privacy_events (
    attempt     INTEGER NOT NULL REFERENCES attempts(attempt),
    client_id   TEXT NOT NULL,
    ledger_seq  INTEGER NOT NULL,
    entry_hash  TEXT NOT NULL,
    identity_key TEXT NOT NULL DEFAULT '',
    event       TEXT NOT NULL,
    signature   BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (attempt, client_id)
);
"""


class AttemptStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ABANDONED = "abandoned"  # the server died during the attempt


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    round: int
    status: AttemptStatus
    stage: str
    mode: str
    session_id: str | None
    base_hash: str
    result_hash: str | None
    checkpoint: str | None
    cohort: tuple[str, ...]
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]
    declined: dict[str, str]
    timings: dict[str, float]
    bytes_in: int
    bytes_out: int
    reason: str | None
    started_at: float
    updated_at: float
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["status"] = self.status.value
        for k in ("cohort", "survivors", "dropouts"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class PrivacyEventRecord:
    attempt: int
    client_id: str
    ledger_seq: int
    entry_hash: str
    event: str
    signature: bytes
    received_at: float


class RoundLog:
    """Thread-safe wrapper over one SQLite file (WAL, synchronous=FULL: a commit is on disk)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise RoundLogError(f"{self.path}: no round log here (has the server run with this state_dir?)")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RoundLogError(f"{self.path}: schema version {row[0]}, this build reads {SCHEMA_VERSION}")
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT (disk full) already rolled back
                        self._db.execute("ROLLBACK")
                    raise
                else:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                full = disk_write_error(exc, self.path, STATE_DISK_FULL)
                if full is None:
                    raise
                raise full from None

    # --- writes -------------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """Mark attempts left ``running`` by a dead server as ``abandoned``; return their ids."""
        now = time.time()
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT attempt FROM attempts WHERE status='running'")]
            db.execute(
                "UPDATE attempts SET status='abandoned', reason='server restarted during the attempt', "
                "finished_at=?, updated_at=? WHERE status='running'",
                (now, now),
            )
        return ids

    def begin_attempt(self, *, round: int, mode: str, base_hash: str, stage: str) -> int:
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM attempts WHERE status='running'").fetchone():
                raise RoundLogError("an attempt is already running; call recover() after a restart")
            cur = db.execute(
                "INSERT INTO attempts(round, status, stage, mode, base_hash, started_at, updated_at) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?)",
                (round, stage, mode, base_hash, now, now),
            )
            return int(cur.lastrowid)

    def update_attempt(
        self,
        attempt: int,
        *,
        stage: str | None = None,
        session_id: str | None = None,
        cohort: list[str] | None = None,
        survivors: list[str] | None = None,
        dropouts: list[str] | None = None,
        declined: dict[str, str] | None = None,
        timings: dict[str, float] | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> None:
        sets: list[str] = ["updated_at=?"]
        vals: list[Any] = [time.time()]
        for col, val in (("stage", stage), ("session_id", session_id)):
            if val is not None:
                sets.append(f"{col}=?")
                vals.append(val)
        for col, val in (("cohort", cohort), ("survivors", survivors), ("dropouts", dropouts),
                         ("declined", declined), ("timings", timings)):
            if val is not None:
                sets.append(f"{col}=?")
                vals.append(json.dumps(val))
        for col, val in (("bytes_in", bytes_in), ("bytes_out", bytes_out)):
            if val is not None:
                sets.append(f"{col}=?")
                vals.append(int(val))
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE attempts SET {', '.join(sets)} WHERE attempt=? AND status='running'", (*vals, attempt)
            )
            if cur.rowcount != 1:
                raise RoundLogError(f"attempt {attempt} is not running")

    def complete_attempt(self, attempt: int, *, result_hash: str, checkpoint: str, stage: str = "done") -> None:
        """Commit the round: after this the checkpoint is the global adapter (one transaction)."""
        now = time.time()
        with self._tx() as db:
            try:
                cur = db.execute(
                    "UPDATE attempts SET status='completed', stage=?, result_hash=?, checkpoint=?, "
                    "finished_at=?, updated_at=? WHERE attempt=? AND status='running'",
                    (stage, result_hash, checkpoint, now, now, attempt),
                )
            except sqlite3.IntegrityError:
                raise RoundLogError(f"attempt {attempt}: its round is already completed; refusing to apply twice") from None
            if cur.rowcount != 1:
                raise RoundLogError(f"attempt {attempt} is not running")

    def abort_attempt(self, attempt: int, *, reason: str, stage: str | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET status='aborted', reason=?, stage=COALESCE(?, stage), finished_at=?, "
                "updated_at=? WHERE attempt=? AND status='running'",
                (reason, stage, now, now, attempt),
            )

    def record_privacy_event(self, attempt: int, client_id: str, event: str, signature: bytes, *,
                             ledger_seq: int, entry_hash: str, prev_hash: str | None = None,
                             identity_key: str = "") -> bool:
        """Store a client's signed DP event; a second report for the same attempt is ignored (False).

        Refuses (``LedgerConflict``) an entry that contradicts what this client reported before: another
        hash at a recorded position, or a ``prev_hash`` that is not the recorded entry before it (a
        forked or rewritten ledger). Gaps are allowed: a client can spend budget without reporting
        it (it crashed after its write-ahead append)."""
        with self._tx() as db:
            same = db.execute("SELECT entry_hash FROM privacy_events WHERE client_id=? AND ledger_seq=?",
                              (client_id, int(ledger_seq))).fetchone()
            if same is not None and same[0] != entry_hash:
                raise LedgerConflict(f"ledger entry {ledger_seq} of {client_id} differs from the one reported before")
            if prev_hash is not None and ledger_seq > 0:
                before = db.execute("SELECT entry_hash FROM privacy_events WHERE client_id=? AND ledger_seq=?",
                                    (client_id, int(ledger_seq) - 1)).fetchone()
                if before is not None and before[0] != prev_hash:
                    raise LedgerConflict(f"ledger entry {ledger_seq} of {client_id} does not chain to entry {ledger_seq - 1}")
            cur = db.execute(
                "INSERT OR IGNORE INTO privacy_events(attempt, client_id, ledger_seq, entry_hash, identity_key, event, "
                "signature, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (attempt, client_id, int(ledger_seq), entry_hash, identity_key, event, bytes(signature), time.time()),
            )
            return cur.rowcount == 1

    # --- reads --------------------------------------------------------------------------------
    def _rec(self, r: sqlite3.Row) -> AttemptRecord:
        return AttemptRecord(
            attempt=r["attempt"], round=r["round"], status=AttemptStatus(r["status"]), stage=r["stage"],
            mode=r["mode"], session_id=r["session_id"], base_hash=r["base_hash"], result_hash=r["result_hash"],
            checkpoint=r["checkpoint"], cohort=tuple(json.loads(r["cohort"])),
            survivors=tuple(json.loads(r["survivors"])), dropouts=tuple(json.loads(r["dropouts"])),
            declined=json.loads(r["declined"]), timings=json.loads(r["timings"]), bytes_in=r["bytes_in"],
            bytes_out=r["bytes_out"], reason=r["reason"], started_at=r["started_at"],
            updated_at=r["updated_at"], finished_at=r["finished_at"],
        )

    def attempts(self, limit: int | None = None) -> list[AttemptRecord]:
        q = "SELECT * FROM attempts ORDER BY attempt DESC"
        with self._lock:
            rows = self._db.execute(q + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [self._rec(r) for r in reversed(rows)]

    def attempt(self, attempt: int) -> AttemptRecord:
        with self._lock:
            r = self._db.execute("SELECT * FROM attempts WHERE attempt=?", (attempt,)).fetchone()
        if r is None:
            raise RoundLogError(f"no attempt {attempt}")
        return self._rec(r)

    def last_completed(self) -> AttemptRecord | None:
        with self._lock:
            r = self._db.execute(
                "SELECT * FROM attempts WHERE status='completed' ORDER BY round DESC LIMIT 1"
            ).fetchone()
        return self._rec(r) if r else None

    def completed_rounds(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM attempts WHERE status='completed'").fetchone()[0])

    def attempt_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])

    def identity_keys(self) -> dict[str, str]:
        """Per client: the certified identity key (hex) its reported ledger entries verified under
        (the newest), for ``securefed audit verify --public-key``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT client_id, identity_key FROM privacy_events WHERE identity_key != '' ORDER BY received_at"
            ).fetchall()
        return {c: k for c, k in rows}

    def ledger_heads(self) -> dict[str, tuple[int, str]]:
        """Per client: (length, newest entry hash) of its ledger as reported here, for
        ``securefed audit verify --expect-head`` (catches a ledger whose newest entries were cut)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT client_id, MAX(ledger_seq), entry_hash FROM privacy_events GROUP BY client_id"
            ).fetchall()
        out = {}
        for cid, seq, _ in rows:
            with self._lock:
                h = self._db.execute("SELECT entry_hash FROM privacy_events WHERE client_id=? AND ledger_seq=?",
                                     (cid, seq)).fetchone()[0]
            out[cid] = (int(seq) + 1, h)
        return out

    def privacy_events(self, client_id: str | None = None) -> list[PrivacyEventRecord]:
        q = "SELECT attempt, client_id, ledger_seq, entry_hash, event, signature, received_at FROM privacy_events"
        args: tuple = ()
        if client_id is not None:
            q += " WHERE client_id=?"
            args = (client_id,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY attempt, client_id", args).fetchall()
        return [PrivacyEventRecord(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in rows]
