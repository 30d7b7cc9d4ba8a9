"""Why a TLS connection failed, in one line that says what to change.

gRPC reports every handshake failure to the caller as ``UNAVAILABLE`` ("failed to connect to all
addresses"), the same as a server that is down, so a member with a certificate from another CA, an
expired certificate or the wrong host name would retry forever. When a call fails that way, the member
asks ``diagnose``: it opens one TLS connection itself (Python's ``ssl``, presenting the member's own
certificate, verifying nothing during the handshake), looks at what the server presented and at
whether the server then kept or dropped the connection, and checks the certificates with
``cryptography``:

* the server's certificate: issued by the federation CA this member pins? valid now? naming the host
  the member dials (or ``client.server_name``)?
* the member's own certificate, when the server hangs up right after the handshake (TLS 1.3 checks
  the client's certificate then): expired, not yet valid, from another CA, revoked?

``TlsProblem.NONE`` means TLS is fine (or the server is simply unreachable): keep retrying.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securefed.errors import CertificateError, CertificateRevoked
from securefed.transport import identity as tid
from securefed.transport.revocation import RevocationList

PROBE_TIMEOUT_S = 5.0
EXPIRY_WARNING_DAYS = 30
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class TlsProblem(str, enum.Enum):
    NONE = "none"  # TLS works, or nothing answers at that address: not a certificate problem
    SERVER_UNKNOWN_CA = "server_unknown_ca"
    SERVER_EXPIRED = "server_expired"
    SERVER_NOT_YET_VALID = "server_not_yet_valid"
    SERVER_NAME_MISMATCH = "server_name_mismatch"
    SERVER_NOT_A_SERVER = "server_not_a_server"
    CLIENT_EXPIRED = "client_expired"
    CLIENT_NOT_YET_VALID = "client_not_yet_valid"
    CLIENT_UNKNOWN_CA = "client_unknown_ca"
    CLIENT_REVOKED = "client_revoked"
    CLIENT_REFUSED = "client_refused"  # the server dropped us although our certificate looks fine here


@dataclass(frozen=True)
class Diagnosis:
    problem: TlsProblem
    message: str

    def raise_if_problem(self) -> None:
        if self.problem is TlsProblem.CLIENT_REVOKED:
            raise CertificateRevoked(self.message)
        if self.problem is not TlsProblem.NONE:
            raise CertificateError(self.message)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _day(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC"


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CertificateError(f"server address {address!r} has no port: write host:port")
    return host.strip("[]"), int(port)


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(i) for i in san.get_values_for_type(x509.IPAddress))]


def names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether ``cert`` is valid for ``host`` (an IP address or a DNS name; ``*.`` wildcards, one label)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for name in certificate_names(cert):
        if ip is not None:
            try:
                if ipaddress.ip_address(name) == ip:
                    return True
            except ValueError:
                continue
        elif name.lower() == host.lower() or (
            name.startswith("*.") and "." in host and host.lower().split(".", 1)[1] == name[2:].lower()
        ):
            return True
    return False


_MEMBER_FIX = "ask the operator for a new one (securefed keys issue-client NAME --force, then keys bundle)"
SERVER_FIX = "issue a new one (securefed keys issue-server --dir DIR --force) and restart the server"


def _own_problem(cert: x509.Certificate, ca: x509.Certificate, revocations: RevocationList | None,
                 now: dt.datetime, what: str, fix: str = _MEMBER_FIX) -> Diagnosis | None:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, another issuer: another CA in any case
        return Diagnosis(TlsProblem.CLIENT_UNKNOWN_CA, (
            f"{what} was not issued by the federation CA in ca.pem: the certificate and ca.pem come from "
            f"different CAs; {fix}"))
    if now < cert.not_valid_before_utc:
        return Diagnosis(TlsProblem.CLIENT_NOT_YET_VALID,
                         f"{what} is not valid before {_day(cert.not_valid_before_utc)}: check this machine's clock")
    if now > cert.not_valid_after_utc:
        return Diagnosis(TlsProblem.CLIENT_EXPIRED, (
            f"{what} expired on {_day(cert.not_valid_after_utc)}: {fix}"))
    if revocations is not None and revocations.revokes(cert):
        return Diagnosis(TlsProblem.CLIENT_REVOKED, (
            f"{what} (serial {cert.serial_number:x}) is revoked ({revocations.describe()}): {fix}"))
    return None


def check_own_certificate(cert_pem: bytes, ca: x509.Certificate, *, revocations: RevocationList | None = None,
                          now: dt.datetime | None = None, what: str = "this member's certificate",
                          fix: str = _MEMBER_FIX) -> int:
    """``CertificateError`` (``CertificateRevoked``) unless the certificate is from ``ca``, valid now and
    not revoked; returns the whole days it has left (callers warn when few remain)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = now or _now()
    bad = _own_problem(cert, ca, revocations, now, what, fix)
    if bad is not None:
        bad.raise_if_problem()
    return (cert.not_valid_after_utc - now).days


def _server_problem(cert: x509.Certificate, ca: x509.Certificate, host: str, server_name: str | None,
                    now: dt.datetime) -> Diagnosis | None:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return Diagnosis(TlsProblem.SERVER_UNKNOWN_CA, (
            "the server presented a certificate that the federation CA in this member's ca.pem did not issue: "
            "ca.pem is another federation's CA (or the operator re-created the CA), or this address is not "
            "the federation's server; get the current ca.pem from the operator (securefed keys bundle)"))
    if now < cert.not_valid_before_utc:
        return Diagnosis(TlsProblem.SERVER_NOT_YET_VALID, (
            f"the server's certificate is not valid before {_day(cert.not_valid_before_utc)}: check the clock "
            "of this machine and of the server"))
    if now > cert.not_valid_after_utc:
        return Diagnosis(TlsProblem.SERVER_EXPIRED, (
            f"the server's certificate expired on {_day(cert.not_valid_after_utc)}: the operator must issue a "
            "new one (securefed keys issue-server --force) and restart the server"))
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        is_server = ExtendedKeyUsageOID.SERVER_AUTH in eku
    except x509.ExtensionNotFound:
        is_server = False
    if not is_server:
        return Diagnosis(TlsProblem.SERVER_NOT_A_SERVER,
                         "the server presented a certificate that is not a server certificate: it must use the "
                         "one from securefed keys issue-server")
    expected = server_name or host
    if not names_host(cert, expected):
        names = ", ".join(certificate_names(cert)) or "no names"
        fix = (f"set client.server_name to one of them in client.toml (the name in the certificate), dial one of "
               f"them, or have the operator reissue it with --host {expected}" if not server_name else
               f"fix client.server_name in client.toml, or have the operator reissue it with --host {expected}")
        return Diagnosis(TlsProblem.SERVER_NAME_MISMATCH,
                         f"the server's certificate is for {names}, not {expected!r}: {fix}")
    return None


def _client_problem(cert_pem: bytes, ca: x509.Certificate, revocations: RevocationList | None,
                    now: dt.datetime) -> Diagnosis:
    cert = x509.load_pem_x509_certificate(cert_pem)
    bad = _own_problem(cert, ca, revocations, now, "this member's certificate")
    if bad is not None:
        return Diagnosis(bad.problem, f"the server refused this member: {bad.message}")
    return Diagnosis(TlsProblem.CLIENT_REFUSED, (
        "the server refused this member's certificate although it is valid and issued by the CA in ca.pem: the "
        "server trusts another CA (compare the server's credentials_dir/ca.pem with this member's), or it "
        "revoked this member"))


class _Outcome(enum.Enum):
    ANSWERED = "answered"  # the server spoke HTTP/2 to us: it accepted our certificate
    HUNG_UP = "hung_up"  # handshake done, then the server closed without a word: it refused our certificate
    CERT_ALERT = "cert_alert"  # the server sent a TLS alert about our certificate
    NOTHING = "nothing"  # refused, reset, timed out, unreachable: no evidence about certificates


# TLS alerts a server sends about the client's certificate (OpenSSL/BoringSSL reason names).
_CERT_ALERTS = frozenset({"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                          "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
                          "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_CERTIFICATE_REQUIRED"})
_CONFIRM_HANG_UPS = 3  # a server that restarts can drop one connection: a refusal must repeat


def _probe(host: str, port: int, ctx: ssl.SSLContext, sni: str,
           timeout_s: float) -> tuple[x509.Certificate | None, _Outcome]:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=sni) as conn:
            der = conn.getpeercert(binary_form=True)
            cert = x509.load_der_x509_certificate(der) if der else None
            # TLS 1.3: the server checks our certificate after the handshake and hangs up if it refuses
            # it; a gRPC server that accepts it answers our HTTP/2 preface with its SETTINGS frame.
            try:
                conn.sendall(_H2_PREFACE)
                answered = bool(conn.recv(9))
            except ssl.SSLError as exc:
                return cert, (_Outcome.CERT_ALERT if exc.reason in _CERT_ALERTS else _Outcome.NOTHING)
            except OSError:
                return cert, _Outcome.HUNG_UP
            return cert, _Outcome.ANSWERED if answered else _Outcome.HUNG_UP
    except ssl.SSLError as exc:
        return None, _Outcome.CERT_ALERT if exc.reason in _CERT_ALERTS else _Outcome.NOTHING
    except (OSError, ValueError):  # refused, reset, unreachable, timed out; an unparsable certificate
        return None, _Outcome.NOTHING


def diagnose(address: str, credentials_dir: str | Path, client_name: str, *, server_name: str | None = None,
             revocations: RevocationList | None = None, now: dt.datetime | None = None,
             timeout_s: float = PROBE_TIMEOUT_S, confirm_pause_s: float = 0.5) -> Diagnosis:
    """Open a TLS connection to ``address`` as ``client_name`` and say what, if anything, is wrong with
    the certificates on either side. Only evidence counts: a certificate that fails its checks, an alert
    about ours, or a server that hangs up on us every time (a single drop may be a restart)."""
    d = tid.CredentialsDir(Path(credentials_dir))
    ca = tid.load_ca_certificate(d)
    cert_pem = d.client_cert(client_name).read_bytes()
    host, port = split_address(address)
    now = now or _now()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we verify below, with the reasons; this connection carries no data
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(d.client_cert(client_name), d.client_key(client_name))
    for attempt in range(_CONFIRM_HANG_UPS):
        server_cert, outcome = _probe(host, port, ctx, server_name or host, timeout_s)
        if server_cert is not None:
            bad = _server_problem(server_cert, ca, host, server_name, now)
            if bad is not None:
                return bad
        if outcome is _Outcome.CERT_ALERT:
            return _client_problem(cert_pem, ca, revocations, now)
        if outcome is not _Outcome.HUNG_UP:
            return Diagnosis(TlsProblem.NONE, "")
        if attempt + 1 < _CONFIRM_HANG_UPS:
            time.sleep(confirm_pause_s)
    return _client_problem(cert_pem, ca, revocations, now)
