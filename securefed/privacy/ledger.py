"""The per-client privacy ledger: an append-only, hash-chained, signed log of DP events in SQLite.

Layout (one SQLite file per client, WAL journal, ``synchronous=FULL``):

- ``header`` (exactly one row): canonical JSON ``{"format", "version", "client_id", "public_key",
  "budget", "created"}`` (version 2 adds ``"dataset"``: the fingerprint of the training data this
  ledger accounts for), its SHA-256 ``header_hash``, and an Ed25519 signature by the client's
  identity key over ``HEADER_CONTEXT || header_hash``. An auditor needs only this file: the public
  key and the budget are in it.

One ledger per dataset. A member's budget protects its *data*, whatever federation the data joins, so
a version 2 ledger is bound to one dataset fingerprint and every event in it must name that dataset
(``DpEvent.context``). Version 1 ledgers (no dataset in the header, events without context) stay
readable and verifiable unchanged; a member that keeps appending to one writes events with context,
and all of those must name one dataset.
- ``entries`` (seq = 0, 1, 2, ...): the canonical JSON of one ``DpEvent``, ``prev_hash`` (the
  previous entry's hash; for seq 0 the header hash), ``entry_hash = SHA-256(prev_hash || event bytes)``
  and a signature over ``ENTRY_CONTEXT || entry_hash``.

Triggers refuse UPDATE and DELETE through SQLite; edits made to the file by other means are caught
on load: every open, every ``entries()`` and every audit re-verifies the whole chain and raises
``LedgerError`` on a gap, a reordering, a changed byte or a bad signature. Dropping the *newest*
entries leaves a shorter valid chain; that is caught only against an anchor held elsewhere (the
``head()`` the client reports to the server with its update): pass ``expected_head`` to verify.

Write-ahead: the client appends the event *before* its update leaves the client, in one transaction
that is durable when ``append`` returns. A crash after the append costs budget without a release
(safe); the reverse order could release without accounting (unsafe).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from securefed.crypto.keys import verify_signature
from securefed.errors import (
    CryptoError,
    InvalidMessage,
    LedgerBudgetChanged,
    LedgerError,
    LedgerHeaderTampered,
    SecureFedError,
)
from securefed.fsutil import atomic_write
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.budget import PrivacyBudget
from securefed.storage import LEDGER_DISK_FULL, disk_write_error
from securefed.privacy.events import (
    _CLIENT_ID,
    AccountantName,
    DpEvent,
    canonical_json,
    parse_accountant_name,
    utc_timestamp,
)

LEDGER_FORMAT = "securefed-ledger"
LEDGER_VERSION = 2
LEGACY_LEDGER_VERSION = 1  # no dataset in the header: still read and verified, never created by the daemon
EXPORT_FORMAT = "securefed-ledger-export"
# Domain separation: the identity key also signs secure-aggregation messages; a ledger signature must
# never be valid as one of those (or the other way round).
HEADER_CONTEXT = b"securefed/ledger-header/v1\x00"
ENTRY_CONTEXT = b"securefed/ledger-entry/v1\x00"
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS header (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    body        TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    signature   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq         INTEGER PRIMARY KEY CHECK (seq >= 0),
    event       TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    entry_hash  TEXT NOT NULL UNIQUE,
    signature   TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_append_only_u BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_append_only_d BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS header_append_only_u BEFORE UPDATE ON header
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger header is immutable'); END;
CREATE TRIGGER IF NOT EXISTS header_append_only_d BEFORE DELETE ON header
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger header is immutable'); END;
"""


class Signer(Protocol):
    """What the ledger needs of an identity (``securefed.crypto.keys.IdentityKeyPair``)."""

    def public_bytes(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_hash(prev_hash: str, event_bytes: bytes) -> str:
    """SHA-256(prev_hash bytes || canonical event bytes), hex."""
    return sha256_hex(bytes.fromhex(prev_hash) + event_bytes)


@dataclass(frozen=True, slots=True)
class LedgerHeader:
    client_id: str
    public_key: bytes
    budget: PrivacyBudget
    created: str
    body: bytes  # the canonical JSON that is hashed and signed
    header_hash: str
    signature: bytes
    version: int = LEGACY_LEDGER_VERSION
    dataset: str | None = None  # the dataset fingerprint (version 2), None for a version 1 ledger


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    event: DpEvent
    prev_hash: str
    entry_hash: str
    signature: bytes

    @property
    def event_bytes(self) -> bytes:
        return self.event.canonical_bytes()


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """The anchor a client reports with its update: the chain's length and newest hash."""

    length: int
    entry_hash: str


# --- verification: pure functions over raw rows --------------------------------------------------


def _is_hex(s: Any, nbytes: int) -> bool:
    if not isinstance(s, str) or len(s) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return s == s.lower()


_HEADER_KEYS = {LEGACY_LEDGER_VERSION: frozenset({"format", "version", "client_id", "public_key", "budget", "created"})}
_HEADER_KEYS[LEDGER_VERSION] = _HEADER_KEYS[LEGACY_LEDGER_VERSION] | {"dataset"}


def header_body(client_id: str, public_key: bytes, budget: PrivacyBudget, created: str,
                dataset: str | None = None) -> bytes:
    """The canonical header: version 2 with a dataset fingerprint, version 1 (legacy) without one."""
    body: dict[str, Any] = {
        "format": LEDGER_FORMAT,
        "version": LEDGER_VERSION if dataset is not None else LEGACY_LEDGER_VERSION,
        "client_id": client_id,
        "public_key": public_key.hex(),
        "budget": budget.to_dict(),
        "created": created,
    }
    if dataset is not None:
        body["dataset"] = dataset
    return canonical_json(body)


def parse_header(body: Any, header_hash: Any, signature: Any) -> LedgerHeader:
    """Check the header's bytes, hash and self-signature; raise ``LedgerHeaderTampered`` on any failure."""
    if not isinstance(body, str) or not _is_hex(header_hash, 32) or not _is_hex(signature, 64):
        raise LedgerHeaderTampered("ledger header is malformed")
    raw = body.encode("utf-8")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise ValueError("format")
        version = data.get("version")
        if isinstance(version, bool) or version not in _HEADER_KEYS or set(data) != _HEADER_KEYS[version]:
            raise ValueError("keys")
        if not _is_hex(data["public_key"], 32):
            raise ValueError("public key")
        dataset = data.get("dataset")
        if version == LEDGER_VERSION and not _is_hex(dataset, 32):
            raise ValueError("dataset")
        budget = PrivacyBudget.model_validate(data["budget"])
        rebuilt = header_body(data["client_id"], bytes.fromhex(data["public_key"]), budget, data["created"], dataset)
    except (ValueError, TypeError, RecursionError, SecureFedError):  # RecursionError: hostile nesting
        raise LedgerHeaderTampered("ledger header is malformed or has an unsupported format") from None
    if rebuilt != raw:
        raise LedgerHeaderTampered("ledger header is not in canonical form (tampered)")
    if not hmac.compare_digest(sha256_hex(raw), header_hash):
        raise LedgerHeaderTampered("ledger header hash does not match its contents (tampered)")
    public_key = bytes.fromhex(data["public_key"])
    try:
        verify_signature(public_key, bytes.fromhex(signature), HEADER_CONTEXT + bytes.fromhex(header_hash))
    except CryptoError:
        raise LedgerHeaderTampered("ledger header signature is invalid (tampered)") from None
    return LedgerHeader(
        client_id=data["client_id"],
        public_key=public_key,
        budget=budget,
        created=data["created"],
        body=raw,
        header_hash=header_hash,
        signature=bytes.fromhex(signature),
        version=version,
        dataset=dataset,
    )


def verify_entries(header: LedgerHeader, rows: Sequence[Sequence[Any]]) -> list[LedgerEntry]:
    """Verify ``(seq, event, prev_hash, entry_hash, signature)`` rows (in stored order) against the
    header: contiguous seq from 0, each prev_hash the previous hash, each hash recomputed from the
    exact bytes, each signature valid, each event valid and this client's, at the budget's delta."""
    entries: list[LedgerEntry] = []
    prev = header.header_hash
    dataset = header.dataset
    for expected_seq, row in enumerate(rows):
        if len(row) != 5:
            raise LedgerError(f"ledger entry {expected_seq} is malformed")
        seq, event_text, prev_hash, ehash, sig = row
        if seq != expected_seq:
            raise LedgerError(
                f"ledger entries are not contiguous: expected seq {expected_seq}, found {seq!r} (gap or reordering)"
            )
        if not isinstance(event_text, str) or not _is_hex(prev_hash, 32) or not _is_hex(ehash, 32) or not _is_hex(
            sig, 64
        ):
            raise LedgerError(f"ledger entry {seq} is malformed")
        if not hmac.compare_digest(prev_hash, prev):
            raise LedgerError(f"ledger entry {seq} does not link to the previous entry (gap, reordering or tampering)")
        raw = event_text.encode("utf-8")
        if not hmac.compare_digest(entry_hash(prev_hash, raw), ehash):
            raise LedgerError(f"ledger entry {seq} hash does not match its contents (tampered)")
        try:
            verify_signature(header.public_key, bytes.fromhex(sig), ENTRY_CONTEXT + bytes.fromhex(ehash))
        except CryptoError:
            raise LedgerError(f"ledger entry {seq} signature is invalid") from None
        try:
            event = DpEvent.from_json(raw)
        except (InvalidMessage, SecureFedError) as exc:
            raise LedgerError(f"ledger entry {seq} holds an invalid DP event: {exc}") from None
        _check_event_fits(header, event, f"ledger entry {seq}", dataset)
        if dataset is None and event.context is not None:
            dataset = event.context.dataset_fingerprint  # a version 1 ledger: the first event with context fixes it
        entries.append(LedgerEntry(seq, event, prev_hash, ehash, bytes.fromhex(sig)))
        prev = ehash
    return entries


def ledger_dataset(header: LedgerHeader, entries: Sequence[LedgerEntry]) -> str | None:
    """The dataset a ledger accounts for: its header's, or (version 1) its events' when they name one."""
    if header.dataset is not None:
        return header.dataset
    return next((e.event.context.dataset_fingerprint for e in entries if e.event.context is not None), None)


def _check_event_fits(header: LedgerHeader, event: DpEvent, where: str, dataset: str | None = None) -> None:
    if event.client_id != header.client_id:
        raise LedgerError(f"{where}: event is for client {event.client_id!r}, ledger is {header.client_id!r}")
    if event.delta != header.budget.delta:
        raise LedgerError(f"{where}: event delta {event.delta:g} differs from the budget delta {header.budget.delta:g}")
    if event.accountant is not header.budget.accountant:
        raise LedgerError(
            f"{where}: event accountant {event.accountant.value} differs from the budget's "
            f"{header.budget.accountant.value}"
        )
    if header.dataset is not None and event.context is None:
        raise LedgerError(f"{where}: event names no dataset, but this ledger accounts for dataset {header.dataset[:16]}")
    if dataset is not None and event.context is not None and event.context.dataset_fingerprint != dataset:
        raise LedgerError(f"{where}: event is for dataset {event.context.dataset_fingerprint[:16]}, this ledger "
                          f"accounts for dataset {dataset[:16]} (one ledger per dataset)")


def _budget_text(b: PrivacyBudget) -> str:
    cap = f", per_round_epsilon = {b.per_round_epsilon:g}" if b.per_round_epsilon is not None else ""
    return f'target_epsilon = {b.target_epsilon:g}, delta = {b.delta:g}{cap}, accountant = "{b.accountant.value}"'


def budget_changed_message(path: Path, created: PrivacyBudget, configured: PrivacyBudget, spent: float) -> str:
    """One line for a ``[privacy]`` that differs from the ledger's: what to restore, and why a new
    ledger file is no way out (it would forget what the data spent)."""
    return (f"{path}: this ledger was created with the budget {_budget_text(created)} and has spent epsilon "
            f"{spent:.4g} of it; the config says {_budget_text(configured)}. Set [privacy] back to the ledger's "
            "budget (a budget is a commitment, not a setting; never start a new ledger file to change it: the new "
            "one would not count what this data already spent)")


def check_head(entries: Sequence[LedgerEntry], expected: LedgerHead) -> None:
    """Detect tail truncation against an anchor kept outside the ledger."""
    if len(entries) < expected.length:
        raise LedgerError(
            f"ledger has {len(entries)} entries but the anchor says {expected.length} (entries were removed)"
        )
    if expected.length == 0:
        return
    if not hmac.compare_digest(entries[expected.length - 1].entry_hash, expected.entry_hash):
        raise LedgerError(f"ledger entry {expected.length - 1} does not match the anchored hash")


# --- the SQLite-backed ledger ----------------------------------------------------------------------


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    try:
        if read_only:
            try:
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # WAL files cannot be created next to a read-only copy: read the (closed, checkpointed)
                # file as immutable instead, but only if no WAL holds newer data.
                if Path(str(path) + "-wal").exists():
                    raise
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, isolation_level=None,
                                       check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"{path}: cannot enable WAL journaling on the ledger (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot open the ledger: {exc}") from None
    except UnicodeDecodeError:  # a corrupted schema text decodes as garbage
        raise LedgerError(f"{path}: cannot open the ledger: the database schema is corrupt") from None


def _read_rows(conn: sqlite3.Connection, path: Path) -> tuple[tuple | None, list[tuple]]:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"header", "entries"} <= tables:
            return None, []
        headers = conn.execute("SELECT id, body, header_hash, signature FROM header").fetchall()
        rows = conn.execute("SELECT seq, event, prev_hash, entry_hash, signature FROM entries ORDER BY rowid").fetchall()
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: the ledger file is corrupt: {exc}") from None
    except UnicodeDecodeError:  # text columns holding bytes that are not UTF-8
        raise LedgerError(f"{path}: the ledger file is corrupt: undecodable text") from None
    if len(headers) != 1 or headers[0][0] != 0:
        raise LedgerError(f"{path}: the ledger must have exactly one header row")
    return headers[0][1:], rows


class Ledger:
    """One client's ledger. ``open``/``create`` verify everything before returning."""

    def __init__(self, path: Path, conn: sqlite3.Connection, header: LedgerHeader, entries: list[LedgerEntry],
                 identity: Signer | None) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._header = header
        self._entries = entries
        self._identity = identity
        self._lock = threading.Lock()

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, identity: Signer | None = None) -> Ledger:
        """Open and fully verify an existing ledger. Without ``identity`` it is read-only; with one,
        its public key must be the ledger's."""
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"{path}: no ledger there")
        _check_magic(path)
        conn = _connect(path, read_only=identity is None)
        try:
            header_row, rows = _read_rows(conn, path)
            if header_row is None:
                raise LedgerError(f"{path}: not a securefed ledger (no header)")
            header = parse_header(*header_row)
            entries = verify_entries(header, rows)
            if identity is not None and not hmac.compare_digest(identity.public_bytes(), header.public_key):
                raise LedgerError(f"{path}: the identity key is not the key this ledger was created with")
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, header, entries, identity)

    @classmethod
    def create(cls, path: str | os.PathLike, identity: Signer, *, client_id: str, budget: PrivacyBudget,
               dataset: str | None = None) -> Ledger:
        """Create a new, empty ledger (refuses to overwrite anything); bound to ``dataset`` (a
        fingerprint, version 2) when given."""
        path = Path(path)
        if path.exists():
            raise LedgerError(f"{path}: a file already exists there; open it instead of creating a ledger")
        if identity is None:
            raise LedgerError("creating a ledger needs the client's identity key")
        if not isinstance(budget, PrivacyBudget):
            raise LedgerError("creating a ledger needs a PrivacyBudget")
        # validates the client id exactly as events will
        _probe_client_id(client_id)
        if dataset is not None and not _is_hex(dataset, 32):
            raise LedgerError("dataset must be a SHA-256 fingerprint (64 lowercase hex characters)")
        body = header_body(client_id, identity.public_bytes(), budget, utc_timestamp(), dataset)
        hh = sha256_hex(body)
        sig = identity.sign(HEADER_CONTEXT + bytes.fromhex(hh))
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path, read_only=False)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _split_sql(_SCHEMA):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO header (id, body, header_hash, signature) VALUES (0, ?, ?, ?)",
                (body.decode("utf-8"), hh, sig.hex()),
            )
            conn.execute("COMMIT")
            header = parse_header(body.decode("utf-8"), hh, sig.hex())
        except BaseException as exc:
            conn.close()
            for suffix in ("", "-wal", "-shm"):  # nothing was committed: leave no half-made ledger behind
                Path(str(path) + suffix).unlink(missing_ok=True)
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"{path}: cannot create the ledger: {exc}") from None
            raise
        return cls(path, conn, header, [], identity)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, identity: Signer, *, client_id: str,
                       budget: PrivacyBudget, dataset: str | None = None) -> Ledger:
        """The client daemon's entry point: open its ledger, or start one. An existing ledger must be
        for the same client and budget (the budget is a commitment, not a runtime setting) and, when it
        names one, the same dataset."""
        path = Path(path)
        if not path.exists():
            return cls.create(path, identity, client_id=client_id, budget=budget, dataset=dataset)
        ledger = cls.open(path, identity)
        h = ledger.header
        if h.client_id != client_id:
            ledger.close()
            raise LedgerError(f"{path}: ledger belongs to client {h.client_id!r}, not {client_id!r}")
        if h.budget != budget:
            spent = ledger.epsilon()
            ledger.close()
            raise LedgerBudgetChanged(budget_changed_message(path, h.budget, budget, spent))
        known = ledger_dataset(h, ledger._entries)
        if dataset is not None and known is not None and known != dataset:
            ledger.close()
            raise LedgerError(
                f"{path}: this ledger accounts for dataset {known[:16]}, but this member's data is dataset "
                f"{dataset[:16]} (one ledger per dataset: use client.ledger_dir, or the ledger of that data)"
            )
        return ledger

    # --- reading -------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def header(self) -> LedgerHeader:
        return self._header

    @property
    def client_id(self) -> str:
        return self._header.client_id

    @property
    def budget(self) -> PrivacyBudget:
        return self._header.budget

    @property
    def dataset(self) -> str | None:
        return ledger_dataset(self._header, self._entries)

    @property
    def read_only(self) -> bool:
        return self._identity is None

    def entries(self) -> tuple[LedgerEntry, ...]:
        """Re-read and re-verify every entry from disk (raises ``LedgerError`` if the file changed)."""
        with self._lock:
            conn = self._require_open()
            header_row, rows = _read_rows(conn, self._path)
            if header_row is None:
                raise LedgerError(f"{self._path}: the ledger header disappeared")
            header = parse_header(*header_row)
            if header.header_hash != self._header.header_hash:
                raise LedgerError(f"{self._path}: the ledger header changed since it was opened")
            entries = verify_entries(header, rows)
            known = self._entries
            if len(entries) < len(known) or any(
                a.entry_hash != b.entry_hash for a, b in zip(entries, known, strict=False)
            ):
                raise LedgerError(f"{self._path}: entries changed or disappeared since the ledger was opened")
            self._entries = entries
            return tuple(entries)

    def events(self) -> tuple[DpEvent, ...]:
        return tuple(e.event for e in self.entries())

    def head(self) -> LedgerHead:
        """Length and newest hash (the header hash when empty): the anchor to report with an update."""
        with self._lock:
            if not self._entries:
                return LedgerHead(0, self._header.header_hash)
            return LedgerHead(len(self._entries), self._entries[-1].entry_hash)

    def epsilon(self, accountant: str | AccountantName | None = None, delta: float | None = None) -> float:
        """Epsilon spent so far, derived from the verified events (default: the budget's accountant
        and delta)."""
        name = parse_accountant_name(accountant) if accountant is not None else self.budget.accountant
        return compute_epsilon(self.events(), self.budget.delta if delta is None else delta, name)

    # --- writing -------------------------------------------------------------------------------

    def append(self, event: DpEvent) -> LedgerEntry:
        """Durably append one event (one transaction, fsynced on commit) and return its entry.

        Call this *before* the update the event describes leaves the client.
        """
        if type(event) is not DpEvent:
            raise LedgerError(f"only DpEvent records can be appended, got {type(event).__name__}")
        if self._identity is None:
            raise LedgerError(f"{self._path}: ledger is open read-only; open it with the client's identity key")
        _check_event_fits(self._header, event, "cannot append", self.dataset)
        raw = event.canonical_bytes()
        with self._lock:
            conn = self._require_open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    last = conn.execute(
                        "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                    mine = (len(self._entries) - 1, self._entries[-1].entry_hash) if self._entries else None
                    if (last is None) != (mine is None) or (last is not None and tuple(last) != mine):
                        raise LedgerError(
                            f"{self._path}: the ledger on disk is not the one that was verified; reopen it"
                        )
                    seq = len(self._entries)
                    prev = self._entries[-1].entry_hash if self._entries else self._header.header_hash
                    ehash = entry_hash(prev, raw)
                    sig = self._identity.sign(ENTRY_CONTEXT + bytes.fromhex(ehash))
                    conn.execute(
                        "INSERT INTO entries (seq, event, prev_hash, entry_hash, signature) VALUES (?, ?, ?, ?, ?)",
                        (seq, raw.decode("utf-8"), prev, ehash, sig.hex()),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # a failed COMMIT (a full disk) has rolled back already
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise disk_write_error(exc, self._path, LEDGER_DISK_FULL) or LedgerError(
                    f"{self._path}: append failed: {exc}") from None
            entry = LedgerEntry(seq, event, prev, ehash, sig)
            self._entries.append(entry)
            return entry

    # --- export and lifecycle ------------------------------------------------------------------

    def export_dict(self) -> dict[str, Any]:
        """Everything needed to verify the ledger elsewhere, with the exact signed bytes as strings."""
        entries = self.entries()
        h = self._header
        return {
            "format": EXPORT_FORMAT,
            "version": h.version,
            "header": {"body": h.body.decode("utf-8"), "header_hash": h.header_hash, "signature": h.signature.hex()},
            "entries": [
                {
                    "seq": e.seq,
                    "event": e.event_bytes.decode("utf-8"),
                    "prev_hash": e.prev_hash,
                    "entry_hash": e.entry_hash,
                    "signature": e.signature.hex(),
                }
                for e in entries
            ],
        }

    def export_json(self, path: str | os.PathLike | None = None) -> str:
        """The export as JSON text; written atomically (write, fsync, rename) when ``path`` is given."""
        text = json.dumps(self.export_dict(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        if path is not None:
            atomic_write(Path(path), text.encode("utf-8"))
        return text

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                if self._identity is not None:
                    # fold the WAL into the main file so a copied .sqlite holds everything
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            finally:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"{self._path}: ledger is closed")
        return self._conn


# --- loading exports and files for audit ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedLedger:
    """A verified ledger read from a file (SQLite or JSON export), detached from any connection."""

    source: str
    header: LedgerHeader
    entries: tuple[LedgerEntry, ...]

    @property
    def events(self) -> tuple[DpEvent, ...]:
        return tuple(e.event for e in self.entries)


def load_export(data: Any, source: str = "<export>") -> VerifiedLedger:
    """Verify an exported ledger (the dict of ``Ledger.export_dict`` or its JSON text)."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise LedgerError(f"{source}: not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or data.get("version") not in _HEADER_KEYS:
        raise LedgerError(f"{source}: not a securefed ledger export")
    h, es = data.get("header"), data.get("entries")
    if not isinstance(h, dict) or not isinstance(es, list):
        raise LedgerError(f"{source}: ledger export is malformed")
    try:
        header = parse_header(h.get("body"), h.get("header_hash"), h.get("signature"))
        rows = [(e.get("seq"), e.get("event"), e.get("prev_hash"), e.get("entry_hash"), e.get("signature"))
                if isinstance(e, dict) else () for e in es]
        entries = verify_entries(header, rows)
    except LedgerError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    return VerifiedLedger(source, header, tuple(entries))


def read_rows(path: str | os.PathLike) -> tuple[tuple | None, list[tuple]]:
    """Raw (header, entry rows) of a ledger file, read-only and unverified (for audit tooling)."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger there")
    _check_magic(path)
    conn = _connect(path, read_only=True)
    try:
        return _read_rows(conn, path)
    finally:
        conn.close()


def load_ledger(path: str | os.PathLike) -> VerifiedLedger:
    """Verify a ledger file: SQLite (by its magic bytes) or a JSON export."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger there")
    with path.open("rb") as f:
        magic = f.read(len(SQLITE_MAGIC))
    if magic != SQLITE_MAGIC:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            raise LedgerError(f"{path}: neither a SQLite ledger nor a JSON export") from None
        return load_export(text, str(path))
    header_row, rows = read_rows(path)
    if header_row is None:
        raise LedgerError(f"{path}: not a securefed ledger (no header)")
    try:
        header = parse_header(*header_row)
        entries = verify_entries(header, rows)
    except LedgerError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return VerifiedLedger(str(path), header, tuple(entries))


# --- helpers -----------------------------------------------------------------------------------------


def _check_magic(path: Path) -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read: {exc.strerror}") from None
    if magic != SQLITE_MAGIC and path.stat().st_size > 0:
        raise LedgerError(f"{path}: not a SQLite ledger file")


def _probe_client_id(client_id: str) -> None:
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise LedgerError(f"client_id {client_id!r} must be 1-128 characters of letters, digits and ._:@-")


def _split_sql(script: str) -> list[str]:
    """Split the schema into statements (triggers contain ';' inside BEGIN ... END)."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


