"""Check the cohort a plan lists: every member's certificate must come from the pinned federation CA.

The plan names each member with its identity key (which signs its round keys). A key alone proves
nothing: a malicious server could list keys it generated itself and pad the cohort around a victim.
So each member also comes with its client certificate; the member checks it was issued by the
federation CA this member pins (not any CA the server likes), is valid now, is a client certificate,
names that member, and binds exactly the listed identity key.
"""

from __future__ import annotations

import datetime as dt
import hmac
import warnings

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securefed.errors import CryptoError, ProtocolAbort
from securefed.transport import identity as tid


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
