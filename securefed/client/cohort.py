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

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securefed.errors import CryptoError, ProtocolAbort
from securefed.transport import identity as tid


def load_ca(ca_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca_pem)


def verify_member(ca: x509.Certificate, cert_der: bytes, name: str, identity_key: bytes,
                  now: dt.datetime | None = None) -> None:
    """``ProtocolAbort`` unless ``cert_der`` is a valid client certificate from ``ca`` for ``name``
    binding ``identity_key``."""
    try:
        cert = x509.load_der_x509_certificate(bytes(cert_der))
    except ValueError:
        raise ProtocolAbort(f"cohort member {name!r}: unreadable certificate") from None
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
