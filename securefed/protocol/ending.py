"""The end of a federation, signed by the server: the one message on which a member stops for good.

A member cannot tell a server that stopped for an upgrade, crashed, lost its disk or was killed from
one that finished, and it must not guess: a member that exits on a guess stays down when the server
comes back. So the end is explicit. The server signs ``Done`` with the key of its TLS certificate
(ECDSA P-256, issued by the federation CA with the serverAuth usage) over a domain-separated,
canonical encoding of every field that says what ended and how; the member checks the certificate
against the CA it pins (and the newest revocation list it knows), then the signature. Anything else,
including a ``Done`` that does not verify, is an outage to wait out.

Both daemons import this module (the server signs, the member verifies); neither imports the other.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from securefed.errors import CryptoError
from securefed.transport._generated import federation_pb2 as pb

END_DOMAIN = b"securefed/federation-end/v1\x00"
ENDING_NAMES = {pb.FEDERATION_ENDING_COMPLETED: "completed", pb.FEDERATION_ENDING_BUDGET_EXHAUSTED: "budget exhausted",
                pb.FEDERATION_ENDING_GAVE_UP: "gave up"}


def signed_bytes(done: pb.Done) -> bytes:
    """What the signature covers: every field of the end but the certificate and the signature."""
    body = {"federation_id": done.federation_id, "final_round": int(done.final_round), "reason": done.reason,
            "global_adapter_sha256": bytes(done.global_adapter_sha256).hex(), "ending": int(done.ending),
            "ended_at": done.ended_at}
    return END_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal_end(done: pb.Done, certificate_pem: bytes, private_key_pem: bytes, *, now: dt.datetime | None = None) -> pb.Done:
    """Sign ``done`` (its federation id, round, digest, ending and reason filled in) with the server's key."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("the server's TLS key is not an ECDSA key: cannot sign the end of the federation")
    done.ended_at = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done.server_certificate = x509.load_pem_x509_certificate(certificate_pem).public_bytes(serialization.Encoding.DER)
    done.signature = key.sign(signed_bytes(done), ec.ECDSA(hashes.SHA256()))
    return done


def verify_end(done: pb.Done, ca: x509.Certificate, *, federation_id: str | None = None,
               revoked_serials: frozenset[int] = frozenset(), now: dt.datetime | None = None) -> str:
    """``CryptoError`` unless ``done`` is signed by a valid server certificate of ``ca`` (and, when
    given, names ``federation_id``); returns the ending's name."""
    if not done.signature or not done.server_certificate:
        raise CryptoError("an end of the federation without the server's signature")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = x509.load_der_x509_certificate(bytes(done.server_certificate))
        cert.verify_directly_issued_by(ca)
    except Exception:  # unreadable, another issuer, a bad CA signature: all the same refusal
        raise CryptoError("the end of the federation is signed by a certificate the federation CA did not issue") from None
    now = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CryptoError("the end of the federation is signed by a server certificate that is not valid now")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = []
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise CryptoError("the end of the federation is signed by a certificate that is not a server's")
    if cert.serial_number in revoked_serials:
        raise CryptoError("the end of the federation is signed by a revoked server certificate")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CryptoError("the end of the federation is signed by a certificate that is not a server's")
    try:
        key.verify(bytes(done.signature), signed_bytes(done), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError("the signature on the end of the federation does not verify") from None
    if federation_id is not None and done.federation_id != federation_id:
        raise CryptoError(f"the end names federation {done.federation_id!r}, this member joined {federation_id!r}")
    if done.ending not in ENDING_NAMES:
        raise CryptoError("the end of the federation gives no known ending")
    return ENDING_NAMES[done.ending]
