"""The federation's revocation list: an X.509 CRL signed by the CA key, checked by the server at every
call and by every member for every cohort it is shown.

Why a CRL signed by the CA, carried in the round plan:

* Members already pin the federation CA (``ca.pem``). A list signed by that CA's key can be handed to
  them by anyone, here by the (untrusted) server inside every round plan, and a list that the pinned
  CA did not sign is refused. Nothing new has to be distributed or trusted.
* Inside the plan the list is covered by the plan digest, which the secure-aggregation session id
  binds: every member of one session checks the cohort against the very same list.
* A server could still replay an *older* list (from before a revocation). Members keep the newest
  list they have seen (its CRL number, persisted in their state) and refuse a plan carrying an older
  one or none; and every list expires (``next_update``, default 30 days): members refuse a plan with
  an expired list. So a server that withholds a new list hides a revocation at most until the list it
  keeps sending expires, and not at all from members who got the new list another way (a member's
  bundle, ``securefed keys bundle``, carries the list current when it was made).

Revoking by name revokes every certificate the CA directory ever issued to that name
(``issued/SERIAL.pem``); reissuing afterwards (``keys issue-client NAME --force``) gives a new serial,
which is not on the list: that is how a compromised key is replaced.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from securefed.errors import ConfigError, CryptoError
from securefed.fsutil import atomic_write
from securefed.logs import get_logger, log
from securefed.transport import identity as tid

CRL_FILE = "crl.pem"
CRL_VALIDITY_DAYS = 30
_RELOAD_EVERY_S = 1.0  # the server re-reads crl.pem at most this often (a stat per call otherwise)

logger = get_logger("transport.revocation")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class RevocationList:
    """A verified revocation list of the federation CA."""

    der: bytes
    number: int
    serials: frozenset[int]
    last_update: dt.datetime
    next_update: dt.datetime

    @classmethod
    def parse(cls, data: bytes, ca: x509.Certificate, source: str = "revocation list") -> RevocationList:
        """PEM or DER bytes -> a list signed by ``ca``; ``CryptoError`` for anything else."""
        try:
            data = bytes(data)
            crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                   else x509.load_der_x509_crl(data))
            ok = crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (ValueError, TypeError, x509.ExtensionNotFound):
            raise CryptoError(f"{source} is not a revocation list of the federation CA") from None
        if not ok:
            raise CryptoError(f"{source} is not signed by the federation CA")
        if crl.next_update_utc is None:
            raise CryptoError(f"{source} has no expiry (next update)")
        return cls(crl.public_bytes(serialization.Encoding.DER), int(number),
                   frozenset(r.serial_number for r in crl), crl.last_update_utc, crl.next_update_utc)

    def revokes(self, cert: x509.Certificate) -> bool:
        return cert.serial_number in self.serials

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) > self.next_update

    def describe(self) -> str:
        return (f"revocation list #{self.number} ({len(self.serials)} certificate(s), "
                f"valid until {self.next_update:%Y-%m-%d %H:%M} UTC)")

    @property
    def pem(self) -> bytes:
        return x509.load_der_x509_crl(self.der).public_bytes(serialization.Encoding.PEM)


def sign_list(ca: tid.CertificateAuthority, serials: Iterable[int], number: int, *,
              days: int | None = None, now: dt.datetime | None = None) -> RevocationList:
    """A new list revoking ``serials``, numbered ``number``, valid ``days`` (default 30)."""
    days = tid.validity_days(days, CRL_VALIDITY_DAYS)
    start = now or _now()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.certificate.subject)
               .last_update(start)
               .next_update(start + dt.timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()),
                              critical=False))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(start).build())
    crl = builder.sign(ca.private_key, hashes.SHA256())
    return RevocationList.parse(crl.public_bytes(serialization.Encoding.DER), ca.certificate)


def load_list(path: Path, ca: x509.Certificate) -> RevocationList | None:
    """The verified list at ``path``, or None when there is no file."""
    if not path.is_file():
        return None
    try:
        return RevocationList.parse(path.read_bytes(), ca, str(path))
    except CryptoError as exc:
        raise ConfigError(f"{exc}; restore it from the CA machine (securefed keys crl --dir DIR)") from None


def _client_name(cert: x509.Certificate) -> str | None:
    try:
        return tid.client_id_from_certificate(cert)
    except CryptoError:
        return None


def revoke(directory: str | os.PathLike[str], names: Iterable[str], *,
           days: int | None = None) -> tuple[RevocationList, dict[str, list[int]]]:
    """Add every certificate ever issued to each of ``names`` to the CA's list, re-sign it (number + 1)
    and write ``crl.pem``; returns the new list and the serials revoked per name."""
    d = tid.CredentialsDir(Path(directory))
    ca = tid.load_ca(d)
    wanted = {tid.validate_client_name(n) for n in names}
    found: dict[str, list[int]] = {n: [] for n in sorted(wanted)}
    for cert in d.issued():
        name = _client_name(cert)
        if name in wanted and cert.issuer == ca.certificate.subject:
            found[name].append(cert.serial_number)
    missing = [n for n, s in found.items() if not s]
    if missing:
        raise ConfigError(f"no certificate was issued to {', '.join(map(repr, missing))} from {d.root}: "
                          "nothing to revoke (check the name and --dir)")
    old = load_list(d.root / CRL_FILE, ca.certificate)
    serials = set(old.serials if old else ()) | {s for v in found.values() for s in v}
    new = sign_list(ca, serials, (old.number + 1) if old else 1, days=days)
    atomic_write(d.root / CRL_FILE, new.pem, mode=0o644)
    return new, found


def refresh(directory: str | os.PathLike[str], *, days: int | None = None) -> RevocationList:
    """Re-sign the current list (same certificates, number + 1, a new expiry); an empty one if none."""
    d = tid.CredentialsDir(Path(directory))
    ca = tid.load_ca(d)
    old = load_list(d.root / CRL_FILE, ca.certificate)
    new = sign_list(ca, old.serials if old else (), (old.number + 1) if old else 1, days=days)
    atomic_write(d.root / CRL_FILE, new.pem, mode=0o644)
    return new


def names_of(directory: str | os.PathLike[str], serials: Iterable[int]) -> dict[int, str]:
    """Which issued certificate each serial was (for messages): serial -> client name or 'server'."""
    d = tid.CredentialsDir(Path(directory))
    want = set(serials)
    out = {}
    for cert in d.issued():
        if cert.serial_number in want:
            cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            out[cert.serial_number] = _client_name(cert) or (str(cns[0].value) if cns else "?")
    return out


class RevocationWatch:
    """The server's list: ``crl.pem`` in its credentials directory, re-read when the file changes, so a
    revocation takes effect within a second without a restart. A new file that does not verify, or
    that is older than the list in force, is refused loudly and the list in force stays: revocation
    never fails open."""

    def __init__(self, path: str | os.PathLike[str], ca: x509.Certificate, *,
                 reload_every_s: float = _RELOAD_EVERY_S) -> None:
        self.path = Path(path)
        self._ca = self.ca = ca
        self._every = reload_every_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._list = load_list(self.path, ca)
        self._stamp = self._file_stamp()
        if self._list is not None:
            self._announce("revocation list in force")

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size  # atomic_write: a new inode per list

    def _announce(self, what: str) -> None:
        lst = self._list
        assert lst is not None
        fields = dict(number=lst.number, revoked=len(lst.serials), next_update=lst.next_update.isoformat())
        if lst.expired():
            log(logger, f"{what}, but it EXPIRED: members refuse plans carrying it; refresh it with "
                "securefed keys crl --dir DIR and copy crl.pem here", level=logging.ERROR, **fields)
        elif lst.next_update - _now() < dt.timedelta(days=7):
            log(logger, f"{what}; it expires within 7 days: refresh it with securefed keys crl --dir DIR",
                level=logging.WARNING, **fields)
        else:
            log(logger, what, **fields)

    def current(self) -> RevocationList | None:
        """The list in force (re-read first if the file changed)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self._every:
                return self._list
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp or stamp is None:
                return self._list  # a deleted file does not un-revoke anyone
            self._stamp = stamp
            try:
                new = RevocationList.parse(self.path.read_bytes(), self._ca, str(self.path))
            except (CryptoError, OSError) as exc:
                log(logger, "refused a new revocation list; the previous one stays in force", level=logging.ERROR,
                    path=str(self.path), error=str(exc))
                return self._list
            if self._list is not None and new.der != self._list.der and new.number <= self._list.number:
                # CRL numbers only grow (RFC 5280): an older or rival list must not un-revoke anyone.
                log(logger, "refused a revocation list not newer than the one in force", level=logging.ERROR,
                    path=str(self.path), number=new.number, in_force=self._list.number)
                return self._list
            self._list = new
            self._announce("revocation list reloaded")
            return new

    def der(self) -> bytes:
        lst = self.current()
        return lst.der if lst is not None else b""

    def is_revoked(self, cert: x509.Certificate | bytes) -> bool:
        lst = self.current()
        if lst is None:
            return False
        if isinstance(cert, (bytes, bytearray, memoryview)):
            try:
                cert = x509.load_der_x509_certificate(bytes(cert))
            except ValueError:
                return True  # unreadable: never admit it
        return lst.revokes(cert)
