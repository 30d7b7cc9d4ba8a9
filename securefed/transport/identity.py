"""Federation PKI: a CA, a server certificate, client certificates that bind an Ed25519 identity.

Layout of a credentials directory (``securefed keys ... --dir D``)::

    D/ca.pem                      federation CA certificate (public; every party pins it)
    D/ca.key                      CA private key (0600; stays with the operator)
    D/server.pem, D/server.key    the coordinator's TLS certificate and key
    D/clients/NAME.pem            client TLS certificate (CN = NAME, SAN URI securefed://client/NAME)
    D/clients/NAME.key            client TLS private key (0600)
    D/clients/NAME.identity.key   client Ed25519 identity private key (0600)
    D/issued/SERIAL.pem           every certificate this CA issued (like OpenSSL's newcerts/), so that
                                  ``securefed keys revoke NAME`` revokes each one ever issued to NAME
    D/crl.pem                     the CA-signed revocation list (``securefed.transport.revocation``)

Key types. TLS keys are ECDSA P-256 with SHA-256 signatures: the one certificate type every TLS
stack a member might run accepts for both TLS 1.2 and 1.3 (gRPC's BoringSSL, OpenSSL, Go, Java).
Ed25519 *certificates* need RFC 8410 support on both ends, which not every client stack has, so
we do not depend on it. The *identity* key, which signs secure-aggregation round keys,
consistency signatures and privacy-ledger entries, is Ed25519 (what securefed.crypto uses).

Identity binding. The client's raw Ed25519 public key is placed in the client certificate in a
non-critical X.509 extension (OID ``IDENTITY_KEY_OID``, value = the key's DER SubjectPublicKeyInfo).
The CA's signature over the certificate therefore attests "client NAME owns identity key K", and the
server reads K from the very certificate that authenticated the TLS connection: no separate binding
document to keep in sync, and no way to present one client's certificate with another's identity key.
The extension is non-critical on purpose: TLS libraries must reject certificates with unknown
*critical* extensions, and only securefed needs to understand this one. The OID is under the
UUID arc 2.25 (ITU-T X.667), which needs no registration and cannot collide.

Private keys are written PKCS#8 PEM without a passphrase, created with mode 0600 (``os.open`` with
0o600, so they are never world-readable even briefly) and refused on load when group/other can
read them, as ssh does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securefed.errors import ConfigError, CryptoError
from securefed.fsutil import atomic_write

# 2.25.<uuid4 as integer>: securefed identity-key extension (see module docstring).
IDENTITY_KEY_OID = x509.ObjectIdentifier("2.25.235998976550115650901031322822185632379")

CLIENT_URI_PREFIX = "securefed://client/"
SERVER_URI = "securefed://server"
SERVER_COMMON_NAME = "securefed-server"
CA_COMMON_NAME = "securefed federation CA"

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
CLIENTS_DIR = "clients"
ISSUED_DIR = "issued"

CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 397  # the CA/Browser forum ceiling; rotate yearly
MAX_VALIDITY_DAYS = 3650

# Client names become certificate CNs, URIs and file names: keep them boring.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CLOCK_SKEW = dt.timedelta(minutes=5)


def validity_days(days: int | None, default: int) -> int:
    """``--days N``: a whole number of days in 1..MAX_VALIDITY_DAYS (None: the default)."""
    if days is None:
        return default
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALIDITY_DAYS:
        raise ConfigError(f"--days must be a whole number of days from 1 to {MAX_VALIDITY_DAYS}, got {days!r}")
    return days


def validate_client_name(name: str) -> str:
    """Return name if it is a valid client id, else raise ConfigError saying what is allowed."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid client name {name!r}: use 1-63 characters from a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


# ---- files ---------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write a secret file with mode 0600 from its first byte on, atomically (write-then-rename)."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; refusing to overwrite a private key (pass --force to replace it)")
    atomic_write(path, data, mode=0o600)


def _write_public(path: Path, data: bytes, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; refusing to overwrite it (pass --force to replace it)")
    atomic_write(path, data, mode=0o644)


def _read_private(path: Path) -> bytes:
    if not path.is_file():
        raise ConfigError(f"missing private key {path}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"private key {path} is accessible by group/others (mode {mode:o}); run chmod 600 {path}")
    return path.read_bytes()


def _read_public(path: Path, what: str, hint: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"missing {what} {path}; {hint}")
    return path.read_bytes()


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_cert(data: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate") from exc


def _load_ec_key(data: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path} is not an ECDSA P-256 key")
    return key


# ---- certificates --------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return _cert_pem(self.certificate)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        *,
        san: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
        days: int | None = None,
        extra: Sequence[x509.ExtensionType] = (),
    ) -> x509.Certificate:
        start = not_before or (_now() - _CLOCK_SKEW)
        end = not_after or (start + dt.timedelta(days=validity_days(days, LEAF_VALIDITY_DAYS)))
        if end <= start:
            raise ConfigError("certificate validity ends before it starts")
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            _builder(subject, self.certificate.subject, public_key, start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        for ext in extra:
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(self.private_key, hashes.SHA256())

    def issue_server(
        self, hosts: list[str], *, not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
        days: int | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A TLS server certificate valid for hosts (IP addresses or DNS names)."""
        if not hosts:
            raise ConfigError("a server certificate needs at least one --host (IP address or DNS name)")
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SERVER_URI)]
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
                    raise ConfigError(f"invalid --host {host!r}: give an IP address or a DNS name") from None
                san.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_COMMON_NAME)])
        cert = self._leaf(
            subject, key.public_key(), san=san, usage=ExtendedKeyUsageOID.SERVER_AUTH,
            not_before=not_before, not_after=not_after, days=days,
        )
        return cert, key

    def issue_client(
        self,
        name: str,
        identity_public_key: ed25519.Ed25519PublicKey,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        days: int | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A TLS client certificate for `name` that also binds its Ed25519 identity public key."""
        validate_client_name(name)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        spki = identity_public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        cert = self._leaf(
            subject, key.public_key(),
            san=[x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=not_before, not_after=not_after, days=days,
            extra=[x509.UnrecognizedExtension(IDENTITY_KEY_OID, spki)],
        )
        return cert, key


def create_ca(*, days: int | None = None) -> CertificateAuthority:
    days = validity_days(days, CA_VALIDITY_DAYS)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    start = _now() - _CLOCK_SKEW
    cert = (
        _builder(name, name, key.public_key(), start, start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


# ---- reading identity out of a certificate -------------------------------------------------


def client_id_from_certificate(cert: x509.Certificate) -> str:
    """The client id a certificate authenticates: CN and SAN URI must both name it, identically.

    Raises CryptoError for a certificate that is not a securefed client certificate (the server's
    own certificate, say, which the same CA signed).
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CryptoError("peer certificate is not a securefed client certificate") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(CLIENT_URI_PREFIX)]
    if len(cns) != 1 or len(uris) != 1:
        raise CryptoError("peer certificate is not a securefed client certificate")
    name = str(cns[0].value)
    if uris[0] != CLIENT_URI_PREFIX + name or not _NAME_RE.fullmatch(name):
        raise CryptoError("peer certificate is not a securefed client certificate")
    return name


def identity_key_from_certificate(cert: x509.Certificate) -> ed25519.Ed25519PublicKey:
    """The Ed25519 identity public key bound in a client certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(IDENTITY_KEY_OID).value
    except x509.ExtensionNotFound:
        raise CryptoError("client certificate carries no securefed identity key") from None
    try:
        key = serialization.load_der_public_key(ext.value)  # type: ignore[attr-defined]
    except ValueError:
        raise CryptoError("client certificate carries a malformed identity key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CryptoError("client certificate identity key is not Ed25519")
    return key


def raw_public_key(key: ed25519.Ed25519PublicKey) -> bytes:
    """The 32-byte raw encoding (what RegisterRequest and CohortMember carry)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---- the directory -------------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialsDir:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_FILE

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY_FILE

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT_FILE

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY_FILE

    def client_cert(self, name: str) -> Path:
        return self.root / CLIENTS_DIR / f"{validate_client_name(name)}.pem"

    def client_key(self, name: str) -> Path:
        return self.root / CLIENTS_DIR / f"{validate_client_name(name)}.key"

    def client_identity_key(self, name: str) -> Path:
        return self.root / CLIENTS_DIR / f"{validate_client_name(name)}.identity.key"

    @property
    def issued_dir(self) -> Path:
        return self.root / ISSUED_DIR

    def issued(self) -> list[x509.Certificate]:
        """Every certificate this CA directory issued (``issued/``), plus the current leaf files, which
        credentials directories made before ``issued/`` existed only have."""
        paths = sorted(self.issued_dir.glob("*.pem")) if self.issued_dir.is_dir() else []
        paths += [self.server_cert, *sorted((self.root / CLIENTS_DIR).glob("*.pem"))]
        seen: dict[int, x509.Certificate] = {}
        for p in paths:
            if p.is_file():
                cert = _load_cert(p.read_bytes(), p)
                seen.setdefault(cert.serial_number, cert)
        return list(seen.values())


def _archive(d: CredentialsDir, cert: x509.Certificate) -> None:
    """Keep a copy of every issued certificate under its serial number (revocation needs them all)."""
    atomic_write(d.issued_dir / f"{cert.serial_number:040x}.pem", _cert_pem(cert), mode=0o644)


def _as_dir(directory: str | os.PathLike[str] | CredentialsDir) -> CredentialsDir:
    return directory if isinstance(directory, CredentialsDir) else CredentialsDir(Path(directory))


_NO_CA_HINT = "create one with: securefed keys init-ca --dir DIR"


def init_ca(directory: str | os.PathLike[str], *, force: bool = False, days: int | None = None) -> CredentialsDir:
    """Create the federation CA in directory (refuses to replace an existing CA unless force)."""
    d = _as_dir(directory)
    d.root.mkdir(parents=True, exist_ok=True)
    if not force and (d.ca_cert.exists() or d.ca_key.exists()):
        raise ConfigError(
            f"a CA already exists in {d.root}; replacing it invalidates every issued certificate (pass --force)"
        )
    ca = create_ca(days=days)
    _write_private(d.ca_key, _key_pem(ca.private_key), overwrite=force)
    _write_public(d.ca_cert, ca.certificate_pem, overwrite=force)
    return d


def load_ca(directory: str | os.PathLike[str] | CredentialsDir) -> CertificateAuthority:
    """The CA with its private key (for issuing)."""
    d = _as_dir(directory)
    if not d.ca_cert.is_file() or not d.ca_key.is_file():
        raise ConfigError(f"no federation CA in {d.root} (need {CA_FILE} and {CA_KEY_FILE}); {_NO_CA_HINT}")
    cert = _load_cert(d.ca_cert.read_bytes(), d.ca_cert)
    key = _load_ec_key(_read_private(d.ca_key), d.ca_key)
    if cert.public_key() != key.public_key():
        raise ConfigError(f"{d.ca_key} does not match {d.ca_cert}")
    return CertificateAuthority(cert, key)


def issue_server(
    directory: str | os.PathLike[str], hosts: list[str], *, force: bool = False, days: int | None = None,
    not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
) -> CredentialsDir:
    d = _as_dir(directory)
    ca = load_ca(d)
    cert, key = ca.issue_server(hosts, days=days, not_before=not_before, not_after=not_after)
    if not force and (d.server_cert.exists() or d.server_key.exists()):
        raise ConfigError(f"{d.server_cert} already exists; refusing to overwrite it (pass --force to replace it)")
    _archive(d, cert)
    _write_private(d.server_key, _key_pem(key), overwrite=force)
    _write_public(d.server_cert, _cert_pem(cert), overwrite=force)
    return d


def issue_client(
    directory: str | os.PathLike[str],
    name: str,
    *,
    force: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int | None = None,
) -> CredentialsDir:
    """Issue a client certificate plus a fresh Ed25519 identity key bound into it."""
    validate_client_name(name)
    d = _as_dir(directory)
    ca = load_ca(d)
    if not force and d.client_cert(name).exists():
        raise ConfigError(f"client {name!r} already has a certificate in {d.root / CLIENTS_DIR} (pass --force to reissue)")
    identity = ed25519.Ed25519PrivateKey.generate()
    cert, key = ca.issue_client(name, identity.public_key(), not_before=not_before, not_after=not_after, days=days)
    (d.root / CLIENTS_DIR).mkdir(parents=True, exist_ok=True)
    _archive(d, cert)
    _write_private(d.client_identity_key(name), _key_pem(identity), overwrite=force)
    _write_private(d.client_key(name), _key_pem(key), overwrite=force)
    _write_public(d.client_cert(name), _cert_pem(cert), overwrite=force)
    return d


# ---- loading for the daemons ---------------------------------------------------------------


@dataclass(frozen=True)
class ServerCredentials:
    ca_pem: bytes
    certificate_pem: bytes
    private_key_pem: bytes


@dataclass(frozen=True)
class ClientCredentials:
    name: str
    ca_pem: bytes
    certificate_pem: bytes
    private_key_pem: bytes
    identity_key: ed25519.Ed25519PrivateKey

    @property
    def identity_public_key(self) -> ed25519.Ed25519PublicKey:
        return self.identity_key.public_key()


def load_ca_pem(directory: str | os.PathLike[str] | CredentialsDir) -> bytes:
    d = _as_dir(directory)
    data = _read_public(d.ca_cert, "federation CA certificate", "copy ca.pem from the operator or " + _NO_CA_HINT)
    _load_cert(data, d.ca_cert)
    try:
        n = len(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ConfigError(f"{d.ca_cert} is not a PEM certificate") from exc
    if n != 1:
        # gRPC trusts every certificate in this file: a second CA placed beside the federation's would let
        # certificates the federation never issued (and its revocation list never covers) in.
        raise ConfigError(f"{d.ca_cert} holds {n} certificates; it must hold exactly one, the federation CA "
                          "(remove the others: copy ca.pem again from the CA machine)")
    return data


def load_ca_certificate(directory: str | os.PathLike[str] | CredentialsDir) -> x509.Certificate:
    """The federation CA certificate (public): what every party pins."""
    d = _as_dir(directory)
    return _load_cert(load_ca_pem(d), d.ca_cert)


def load_server_credentials(directory: str | os.PathLike[str] | CredentialsDir) -> ServerCredentials:
    d = _as_dir(directory)
    ca_pem = load_ca_pem(d)
    cert_pem = _read_public(d.server_cert, "server certificate", "create it with: securefed keys issue-server --dir DIR")
    cert = _load_cert(cert_pem, d.server_cert)
    key_pem = _read_private(d.server_key)
    if cert.public_key() != _load_ec_key(key_pem, d.server_key).public_key():
        raise ConfigError(f"{d.server_key} does not match {d.server_cert}")
    return ServerCredentials(ca_pem, cert_pem, key_pem)


def load_client_credentials(directory: str | os.PathLike[str] | CredentialsDir, name: str) -> ClientCredentials:
    """Load and cross-check a client's TLS certificate, TLS key and identity key."""
    d = _as_dir(directory)
    ca_pem = load_ca_pem(d)
    cert_path = d.client_cert(name)
    cert_pem = _read_public(cert_path, "client certificate", f"create it with: securefed keys issue-client {name} --dir DIR")
    cert = _load_cert(cert_pem, cert_path)
    key_pem = _read_private(d.client_key(name))
    if cert.public_key() != _load_ec_key(key_pem, d.client_key(name)).public_key():
        raise ConfigError(f"{d.client_key(name)} does not match {cert_path}")
    id_path = d.client_identity_key(name)
    try:
        identity = serialization.load_pem_private_key(_read_private(id_path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{id_path} is not an unencrypted PEM private key") from exc
    if not isinstance(identity, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{id_path} is not an Ed25519 key")
    try:
        if client_id_from_certificate(cert) != name:
            raise ConfigError(f"{cert_path} was issued to another client")
        bound = identity_key_from_certificate(cert)
    except CryptoError as exc:
        raise ConfigError(f"{cert_path}: {exc}") from None
    if raw_public_key(bound) != raw_public_key(identity.public_key()):
        raise ConfigError(f"{id_path} does not match the identity key bound in {cert_path}")
    return ClientCredentials(name, ca_pem, cert_pem, key_pem, identity)
