"""TLS failures explained: real gRPC servers on 127.0.0.1 with the certificate problems operators hit, each
classified into one line that names the fix; an outage and a healthy server are not certificate problems."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from securefed import errors
from securefed.transport import diagnose, identity, revocation, service, tls
from securefed.transport.diagnose import TlsProblem
from securefed.transport.messages import FederationServicer, pb

pytestmark = pytest.mark.timeout(60)

NOW = dt.datetime.now(dt.timezone.utc)


class StatusServicer(FederationServicer):
    def GetStatus(self, request, context):
        return pb.StatusResponse(client_id=service.peer_identity(context))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    identity.init_ca(d)
    identity.issue_server(d, ["127.0.0.1", "localhost"])
    identity.issue_client(d, "alice")
    identity.issue_client(d, "old", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    identity.issue_client(d, "future", not_before=NOW + dt.timedelta(days=2), not_after=NOW + dt.timedelta(days=30))
    return d


def _copy_with_server(pki: Path, dst: Path, **issue) -> Path:
    """The same CA, another server certificate (expired, not yet valid, other names)."""
    shutil.copytree(pki, dst)
    identity.issue_server(dst, issue.pop("hosts", ["127.0.0.1", "localhost"]), force=True, **issue)
    return dst


@pytest.fixture()
def serve() -> Iterator:
    started = []

    def _serve(creds: Path) -> int:
        bound = tls.make_server("127.0.0.1:0", creds, max_workers=2)
        service.add_federation_servicer(bound.server, StatusServicer())
        bound.server.start()
        started.append(bound.server)
        return bound.port

    yield _serve
    for s in started:
        s.stop(None)


def test_a_healthy_server_and_an_outage_are_not_certificate_problems(pki: Path, serve) -> None:
    port = serve(pki)
    assert diagnose.diagnose(f"127.0.0.1:{port}", pki, "alice").problem is TlsProblem.NONE
    assert diagnose.diagnose("127.0.0.1:1", pki, "alice").problem is TlsProblem.NONE  # connection refused


def test_server_certificate_from_another_ca(pki: Path, tmp_path: Path, serve) -> None:
    rogue = tmp_path / "rogue"
    identity.init_ca(rogue)
    identity.issue_server(rogue, ["127.0.0.1"])
    d = diagnose.diagnose(f"127.0.0.1:{serve(rogue)}", pki, "alice")
    assert d.problem is TlsProblem.SERVER_UNKNOWN_CA
    assert "ca.pem" in d.message and "keys bundle" in d.message


@pytest.mark.parametrize("window, problem, words", [
    ((NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)), TlsProblem.SERVER_EXPIRED, "issue-server --force"),
    ((NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=30)), TlsProblem.SERVER_NOT_YET_VALID, "clock"),
])
def test_server_certificate_outside_its_validity(pki: Path, tmp_path: Path, serve, window, problem, words) -> None:
    creds = _copy_with_server(pki, tmp_path / "c", not_before=window[0], not_after=window[1])
    d = diagnose.diagnose(f"127.0.0.1:{serve(creds)}", pki, "alice")
    assert d.problem is problem and words in d.message


def test_host_name_mismatch_names_server_name(pki: Path, tmp_path: Path, serve) -> None:
    creds = _copy_with_server(pki, tmp_path / "c", hosts=["fl.example.org"])
    port = serve(creds)
    d = diagnose.diagnose(f"127.0.0.1:{port}", pki, "alice")
    assert d.problem is TlsProblem.SERVER_NAME_MISMATCH
    assert "fl.example.org" in d.message and "client.server_name" in d.message
    # The fix works: with server_name set to the certificate's name the same connection is fine.
    assert diagnose.diagnose(f"127.0.0.1:{port}", pki, "alice", server_name="fl.example.org").problem is TlsProblem.NONE
    wrong = diagnose.diagnose(f"127.0.0.1:{port}", pki, "alice", server_name="other.example.org")
    assert wrong.problem is TlsProblem.SERVER_NAME_MISMATCH and "fix client.server_name" in wrong.message


@pytest.mark.parametrize("name, problem, words", [
    ("old", TlsProblem.CLIENT_EXPIRED, "expired on"),
    ("future", TlsProblem.CLIENT_NOT_YET_VALID, "not valid before"),
])
def test_the_server_refusing_this_members_certificate(pki: Path, serve, name, problem, words) -> None:
    d = diagnose.diagnose(f"127.0.0.1:{serve(pki)}", pki, name)
    assert d.problem is problem and words in d.message and "the server refused this member" in d.message


def test_member_certificate_from_another_ca_than_its_ca_pem(pki: Path, tmp_path: Path, serve) -> None:
    mine = tmp_path / "mine"
    shutil.copytree(pki, mine)
    rogue = tmp_path / "rogue"
    identity.init_ca(rogue)
    identity.issue_client(rogue, "alice")
    for suffix in (".pem", ".key", ".identity.key"):
        shutil.copy2(rogue / "clients" / f"alice{suffix}", mine / "clients" / f"alice{suffix}")
    d = diagnose.diagnose(f"127.0.0.1:{serve(pki)}", mine, "alice")
    assert d.problem is TlsProblem.CLIENT_UNKNOWN_CA and "different CAs" in d.message


def test_own_certificate_check_at_start_up(pki: Path) -> None:
    ca = identity.load_ca_certificate(pki)
    pem = (pki / "clients" / "alice.pem").read_bytes()
    assert 390 <= diagnose.check_own_certificate(pem, ca) <= 397
    with pytest.raises(errors.CertificateError, match="expired on"):
        diagnose.check_own_certificate((pki / "clients" / "old.pem").read_bytes(), ca)
    with pytest.raises(errors.CertificateError, match="clock"):
        diagnose.check_own_certificate((pki / "clients" / "future.pem").read_bytes(), ca)
    lst = revocation.sign_list(identity.load_ca(pki), [identity.load_ca_certificate(pki).serial_number], 1)
    assert diagnose.check_own_certificate(pem, ca, revocations=lst) > 0  # another serial: not this one
    alice = x509.load_pem_x509_certificate(pem)
    with pytest.raises(errors.CertificateRevoked):
        diagnose.check_own_certificate(pem, ca, revocations=revocation.sign_list(
            identity.load_ca(pki), [alice.serial_number], 2))


def test_names_host_matching() -> None:
    cert, _ = identity.create_ca().issue_server(["fl.example.org", "10.0.0.5"])
    assert diagnose.names_host(cert, "fl.example.org") and diagnose.names_host(cert, "FL.example.org")
    assert diagnose.names_host(cert, "10.0.0.5") and not diagnose.names_host(cert, "10.0.0.6")
    assert not diagnose.names_host(cert, "example.org") and not diagnose.names_host(cert, "a.fl.example.org")


def test_a_server_dropping_connections_is_no_evidence_against_a_certificate(pki: Path) -> None:
    """A server restarting (the socket accepts, then closes) must not stop a member with a valid certificate."""
    import socket
    import threading

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    stop = threading.Event()

    def drop_all() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=drop_all, daemon=True)
    t.start()
    try:
        d = diagnose.diagnose(f"127.0.0.1:{lsock.getsockname()[1]}", pki, "alice", confirm_pause_s=0.05)
    finally:
        stop.set()
        t.join(2)
        lsock.close()
    assert d.problem is TlsProblem.NONE
