"""One budget per dataset: the member's data fingerprint, and every ledger that spent budget on that data.

A member's privacy budget protects its *records*, whichever federation they join. So the member names
its data with a fingerprint and keeps one ledger per fingerprint in a ledger directory that all its
federations share (``client.ledger_dir``): a second federation on the same data opens the same ledger
and its budget check counts what the first one spent.

Fingerprint. HMAC-SHA256, under a salt that never leaves the member (``LEDGER_DIR/dataset.salt``,
32 bytes from ``secrets``, mode 0600), over the sorted SHA-256 digests of the records' canonical forms:
reordering lines or reformatting JSON does not change it, changing a record does. The salt matters:
the fingerprint travels to the server in every ledger entry and into audit reports, and an unsalted
hash would let anyone who knows all records but one test candidates for the last one, the very
membership question differential privacy is there to hide. Auditors compare fingerprints; they never
need to recompute one.

Files. ``LEDGER_DIR/dataset-<fp16>.sqlite`` is the ledger of that dataset. If it was created under
another identity key (the member's certificate was reissued, e.g. after a revocation), the member
cannot sign into it, so it starts ``dataset-<fp16>.key-<k16>.sqlite`` and ``DatasetLedgers`` counts the
events of both: the budget covers everything the data ever spent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from securefed.errors import InvalidInput, LedgerError
from securefed.fsutil import atomic_write
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.events import AccountantName, DpEvent, canonical_json, parse_accountant_name
from securefed.privacy.ledger import (
    Ledger,
    LedgerEntry,
    LedgerHead,
    LedgerHeader,
    Signer,
    VerifiedLedger,
    load_ledger,
)

SALT_FILE = "dataset.salt"
_DOMAIN = b"securefed/dataset-fingerprint/v1\x00"


def jsonl_record_digests(path: str | os.PathLike) -> list[bytes]:
    """SHA-256 of each record of a JSONL file, in canonical JSON (formatting does not count)."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read data file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: data file is not UTF-8") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(hashlib.sha256(canonical_json(json.loads(line))).digest())
        except (ValueError, RecursionError):
            raise InvalidInput(f"{path}:{n}: invalid JSON; one JSON object per line") from None
    if not out:
        raise InvalidInput(f"{path}: no records; add JSON lines")
    return out


def text_record_digests(texts: Iterable[str]) -> list[bytes]:
    return [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]


def read_salt(directory: str | os.PathLike) -> bytes | None:
    """The member's fingerprint salt in ``directory``, or None when there is none yet (never writes)."""
    path = Path(directory) / SALT_FILE
    if not path.is_file():
        return None
    salt = path.read_bytes()
    if len(salt) != 32:
        raise LedgerError(f"{path}: not a 32-byte salt; restore it from a backup of the ledger directory")
    return salt


def load_salt(directory: str | os.PathLike) -> bytes:
    """The member's fingerprint salt in ``directory`` (created on first use, mode 0600)."""
    salt = read_salt(directory)
    if salt is not None:
        return salt
    path = Path(directory) / SALT_FILE
    salt = secrets.token_bytes(32)
    atomic_write(path, salt, mode=0o600)
    return salt


def fingerprint(record_digests: Sequence[bytes], salt: bytes) -> str:
    """The dataset's fingerprint (hex): order-free, salted."""
    if len(salt) != 32:
        raise LedgerError("the dataset salt must be 32 bytes")
    mac = hmac.new(salt, _DOMAIN + len(record_digests).to_bytes(8, "big"), hashlib.sha256)
    for d in sorted(record_digests):
        mac.update(d)
    return mac.hexdigest()


def ledger_file(directory: Path, dataset: str, public_key: bytes, *, primary: bool) -> Path:
    stem = f"dataset-{dataset[:16]}"
    return directory / (f"{stem}.sqlite" if primary else f"{stem}.key-{public_key.hex()[:16]}.sqlite")


def find_ledgers(directory: Path, dataset: str, public_key: bytes
                 ) -> tuple[Path | None, list[tuple[Path, VerifiedLedger]]]:
    """The ledgers of ``dataset`` in ``directory``, each verified in full (``LedgerError`` names the file):
    the one this identity key signs (None when there is none yet) and the others. Reads only."""
    mine: Path | None = None
    others: list[tuple[Path, VerifiedLedger]] = []
    for path in sorted(Path(directory).glob(f"dataset-{dataset[:16]}*.sqlite")):
        led = load_ledger(path)
        if led.header.dataset != dataset:
            continue  # a 16-hex prefix collision: another dataset
        if led.header.public_key == public_key:
            mine = path
        else:
            others.append((path, led))
    return mine, others


class DatasetLedgers:
    """The member's writable ledger for one dataset, plus the other ledgers of that dataset (read-only):
    ``events()`` is everything this data spent, which is what the budget checks. Otherwise it reads and
    appends like the writable ``Ledger`` it wraps."""

    def __init__(self, own: Ledger, earlier: Sequence[LedgerEntry] = (), earlier_files: Sequence[Path] = ()) -> None:
        self.own = own
        self._earlier = tuple(e.event for e in earlier)
        self.earlier_files = tuple(earlier_files)

    @classmethod
    def open(cls, directory: str | os.PathLike, identity: Signer, *, client_id: str, budget: PrivacyBudget,
             dataset: str) -> DatasetLedgers:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = identity.public_bytes()
        mine, others = find_ledgers(directory, dataset, key)
        earlier = [e for _, led in others for e in led.entries]
        files = [path for path, _ in others]
        if mine is None:
            primary = ledger_file(directory, dataset, key, primary=True)
            mine = primary if not primary.exists() else ledger_file(directory, dataset, key, primary=False)
        own = Ledger.open_or_create(mine, identity, client_id=client_id, budget=budget, dataset=dataset)
        return cls(own, earlier, files)

    # --- what the daemon and the budget planner use of a ledger ---------------------------------------
    @property
    def path(self) -> Path:
        return self.own.path

    @property
    def header(self) -> LedgerHeader:
        return self.own.header

    @property
    def budget(self) -> PrivacyBudget:
        return self.own.budget

    @property
    def dataset(self) -> str | None:
        return self.own.dataset

    def entries(self) -> tuple[LedgerEntry, ...]:
        return self.own.entries()

    def events(self) -> tuple[DpEvent, ...]:
        return (*self._earlier, *self.own.events())

    def head(self) -> LedgerHead:
        return self.own.head()  # the earlier ledgers are closed to this member: only its own grows

    def epsilon(self, accountant: str | AccountantName | None = None, delta: float | None = None) -> float:
        name = parse_accountant_name(accountant) if accountant is not None else self.budget.accountant
        return compute_epsilon(self.events(), self.budget.delta if delta is None else delta, name)

    def append(self, event: DpEvent) -> LedgerEntry:
        return self.own.append(event)

    def close(self) -> None:
        self.own.close()

    def __enter__(self) -> DatasetLedgers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
