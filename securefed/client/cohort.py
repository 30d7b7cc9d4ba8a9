"""Check the cohort a plan lists: every member's certificate must come from the pinned federation CA.

The plan names each member with its identity key (which signs its round keys). A key alone proves
nothing: a malicious server could list keys it generated itself and pad the cohort around a victim.
So each member also comes with its client certificate; the member checks it was issued by the
federation CA this member pins (not any CA the server likes), is valid now, is a client certificate,
names that member, and binds exactly the listed identity key.

Revocation: the plan carries the federation CA's revocation list (``transport.revocation`` says why
that is authentic). ``MemberRevocations`` keeps the newest list this member has seen, from its bundle
or from earlier plans, in its state directory; a plan with an older list, none after one was seen, an
expired one, or a cohort member on the list is declined, with the reason.
"""

from __future__ import annotations

import datetime as dt
import hmac
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securefed.errors import CertificateRevoked, CryptoError, ProtocolAbort
from securefed.fsutil import atomic_write
from securefed.logs import get_logger, log
from securefed.transport import identity as tid
from securefed.transport.revocation import RevocationList

logger = get_logger("client")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def load_ca(ca_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca_pem)


def verify_member(ca: x509.Certificate, cert_der: bytes, name: str, identity_key: bytes,
                  now: dt.datetime | None = None) -> None:
    """``ProtocolAbort`` unless ``cert_der`` is a valid client certificate from ``ca`` for ``name``
    binding ``identity_key``."""
    cert_der = bytes(cert_der)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lenient-parse deprecation warnings: we refuse those below
            cert = x509.load_der_x509_certificate(cert_der)
            sig = cert.signature
    except Exception:  # ValueError, x509.InvalidVersion, ...: any parse failure is a refusal
        raise ProtocolAbort(f"cohort member {name!r}: unreadable certificate") from None
    # The signature covers only the TBS part; the outer BIT STRING must be the one canonical DER
    # encoding (0 unused bits), so no two byte strings pass as the same certificate.
    if not cert_der.endswith(b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig):
        raise ProtocolAbort(f"cohort member {name!r}: certificate is not canonical DER")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as exc:  # InvalidSignature, wrong issuer, key type
        raise ProtocolAbort(f"cohort member {name!r}: certificate not issued by the federation CA") from exc
    now = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ProtocolAbort(f"cohort member {name!r}: certificate not valid now")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ProtocolAbort(f"cohort member {name!r}: not a client certificate") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ProtocolAbort(f"cohort member {name!r}: not a client certificate")
    try:
        if tid.client_id_from_certificate(cert) != name:
            raise ProtocolAbort(f"cohort member {name!r}: the certificate names another client")
        bound = tid.raw_public_key(tid.identity_key_from_certificate(cert))
    except CryptoError as exc:
        raise ProtocolAbort(f"cohort member {name!r}: {exc}") from None
    if not hmac.compare_digest(bound, bytes(identity_key)):
        raise ProtocolAbort(f"cohort member {name!r}: the listed identity key is not the certified one")


def verify_cohort(ca: x509.Certificate, plan) -> None:
    """Every member a round plan lists must carry a certificate that ``verify_member`` accepts."""
    for m in plan.cohort:
        if not m.certificate:
            raise ProtocolAbort(f"the plan lists {m.client_id!r} without its certificate: refused")
        verify_member(ca, bytes(m.certificate), m.client_id, bytes(m.identity_public_key))


class MemberRevocations:
    """The newest revocation list of the pinned CA this member has seen, and the checks it makes."""

    def __init__(self, ca: x509.Certificate, state_file: Path, provisioned: Path | None = None) -> None:
        self._ca = ca
        self._state_file = state_file
        self.newest: RevocationList | None = None
        for path in (state_file, provisioned):
            if path is not None and path.is_file():
                try:
                    self._adopt(RevocationList.parse(path.read_bytes(), ca, str(path)), persist=False)
                except CryptoError as exc:  # a damaged copy must not lower what we know: say so, keep the other
                    log(logger, "ignored an unusable revocation list", path=str(path), error=str(exc))

    def _adopt(self, lst: RevocationList, *, persist: bool = True) -> None:
        if self.newest is None or lst.number > self.newest.number:
            self.newest = lst
            if persist:
                atomic_write(self._state_file, lst.der)
                log(logger, "revocation list updated", number=lst.number, revoked=len(lst.serials),
                    next_update=lst.next_update.isoformat())

    def check_own(self, certificate_pem: bytes) -> None:
        """``CertificateRevoked`` if this member's own certificate is on the newest list it knows."""
        cert = x509.load_pem_x509_certificate(certificate_pem)
        if self.newest is not None and self.newest.revokes(cert):
            raise CertificateRevoked(f"this member's certificate (serial {cert.serial_number:x}) is on the federation's "
                                     f"{self.newest.describe()}: ask the operator for a new one (securefed keys bundle)")

    def decline_reason(self, plan, now: dt.datetime | None = None) -> str | None:
        """Why this member declines ``plan`` on revocation grounds, or None."""
        seen = self.newest
        raw = bytes(plan.revocation_list)
        if not raw:
            if seen is None:
                return None
            return (f"the plan carries no revocation list, but this member has seen {seen.describe()}: the "
                    "server's credentials_dir needs the current crl.pem")
        try:
            lst = RevocationList.parse(raw, self._ca, "the plan's revocation list")
        except CryptoError as exc:
            return str(exc)
        if seen is not None and lst.number < seen.number:
            return (f"the plan carries revocation list #{lst.number}, older than #{seen.number} this member has "
                    "seen: the server's credentials_dir needs the current crl.pem")
        if lst.expired(now):
            return (f"the federation's {lst.describe()} has expired: the operator must refresh it "
                    "(securefed keys crl --dir DIR) and copy crl.pem to the server")
        self._adopt(lst)
        revoked = lst.serials | (seen.serials if seen else frozenset())  # lists only grow; never forget one
        for m in plan.cohort:
            try:
                serial = x509.load_der_x509_certificate(bytes(m.certificate)).serial_number
            except ValueError:
                continue  # verify_cohort refuses an unreadable certificate
            if serial in revoked:
                return f"cohort member {m.client_id!r} has a revoked certificate ({lst.describe()})"
        return None
