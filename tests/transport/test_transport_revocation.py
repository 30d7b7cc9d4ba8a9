"""Revocation: the CA-signed list, `keys revoke` / `keys crl`, the server's reloading watch, and the server
refusing a revoked certificate at every call over real mutual TLS (with the negative control)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securefed import cli, errors
from securefed.config import parse_model
from securefed.server.config import ServerConfig
from securefed.server.culprits import Culprits
from securefed.server.mailbox import Mailbox
from securefed.server.service import FederationService
from securefed.transport import identity, revocation, service, tls
from securefed.transport.messages import FederationStub, pb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    identity.init_ca(d)
    identity.issue_server(d, ["127.0.0.1", "localhost"])
    for n in ("alice", "bob"):
        identity.issue_client(d, n)
    return d


def _cert(d: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / "clients" / f"{name}.pem").read_bytes())


def _ca(d: Path) -> x509.Certificate:
    return identity.load_ca_certificate(d)


def test_revoke_lists_every_certificate_ever_issued_to_the_name(pki: Path) -> None:
    first = _cert(pki, "alice")
    identity.issue_client(pki, "alice", force=True)  # a reissue: the old certificate still exists somewhere
    second = _cert(pki, "alice")
    lst, found = revocation.revoke(pki, ["alice"])
    assert sorted(found["alice"]) == sorted([first.serial_number, second.serial_number])
    assert lst.revokes(first) and lst.revokes(second) and not lst.revokes(_cert(pki, "bob"))
    assert lst.number == 1 and not lst.expired()
    on_disk = revocation.load_list(pki / revocation.CRL_FILE, _ca(pki))
    assert on_disk is not None and on_disk.serials == lst.serials
    # Reissuing after the revocation gives a certificate the list does not name: that is key rotation.
    identity.issue_client(pki, "alice", force=True)
    assert not on_disk.revokes(_cert(pki, "alice"))


def test_lists_grow_and_are_numbered(pki: Path) -> None:
    a, _ = revocation.revoke(pki, ["alice"])
    b, _ = revocation.revoke(pki, ["bob"])
    c = revocation.refresh(pki, days=5)
    assert (a.number, b.number, c.number) == (1, 2, 3)
    assert a.serials < b.serials == c.serials
    assert c.next_update - c.last_update == dt.timedelta(days=5)


def test_a_list_not_signed_by_the_pinned_ca_is_refused(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    identity.init_ca(other)
    identity.issue_client(other, "alice")
    forged, _ = revocation.revoke(other, ["alice"])
    with pytest.raises(errors.CryptoError, match="not signed by the federation CA"):
        revocation.RevocationList.parse(forged.der, _ca(pki))
    real, _ = revocation.revoke(pki, ["bob"])
    tampered = bytearray(real.der)
    tampered[-5] ^= 1  # inside the signature
    with pytest.raises(errors.CryptoError):
        revocation.RevocationList.parse(bytes(tampered), _ca(pki))
    assert revocation.RevocationList.parse(real.pem, _ca(pki)).serials == real.serials  # PEM and DER both read


def test_unknown_name_and_bad_days_are_one_line_errors(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "revoke", "carol", "--dir", str(pki)]) == 2
    assert "no certificate was issued to 'carol'" in capsys.readouterr().err
    assert cli.main(["keys", "crl", "--dir", str(pki), "--days", "0"]) == 2
    assert "--days must be" in capsys.readouterr().err


def test_watch_reloads_refuses_older_or_forged_lists_and_never_fails_open(pki: Path) -> None:
    path = pki / revocation.CRL_FILE
    watch = revocation.RevocationWatch(path, _ca(pki), reload_every_s=0)
    alice, bob = _cert(pki, "alice"), _cert(pki, "bob")
    assert watch.current() is None and not watch.is_revoked(alice)
    first, _ = revocation.revoke(pki, ["alice"])  # list #1
    assert watch.is_revoked(alice) and not watch.is_revoked(bob)  # picked up without a restart
    revocation.revoke(pki, ["bob"])  # list #2
    assert watch.is_revoked(bob)

    bump = iter(range(10**9, 10**10, 10**9))

    def replace_with(data: bytes) -> None:
        path.write_bytes(data)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + next(bump)))  # a new stamp even on coarse clocks

    # An older list (a restored backup, a replay) does not un-revoke anyone; nor does another list
    # with the same number, garbage, or a deleted file.
    replace_with(first.pem)
    assert watch.is_revoked(bob) and watch.current().number == 2
    same_number = revocation.sign_list(identity.load_ca(pki), [alice.serial_number], 2)
    replace_with(same_number.pem)
    assert watch.is_revoked(bob)
    replace_with(b"not a list")
    assert watch.is_revoked(bob)
    path.unlink()
    assert watch.is_revoked(bob) and watch.is_revoked(alice)


class _Coordinator:
    """What ``FederationService`` needs of the coordinator for Register: a mailbox and a status."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir  # the security-alert log lives there
        self.config = parse_model(ServerConfig, {"server": {"credentials_dir": ".", "state_dir": str(state_dir),
                                                            "base_model_dir": "."}})  # defaults: heartbeat interval
        self.mailbox = Mailbox(threading.Condition(threading.RLock()), threading.Event(), poll_s=1.0,
                               describe=lambda: "")
        self.culprits = Culprits(state_dir)  # the security-alert log the service records into

    def status(self) -> dict:
        return {"attempt": 0}


def _serve_with_watch(pki: Path, watch: revocation.RevocationWatch | None):
    """The coordinator's real servicer: every call goes through its revocation check."""
    svc = FederationService(_Coordinator(pki.parent / "server-state"), revocations=watch)  # type: ignore[arg-type]
    bound = tls.make_server("127.0.0.1:0", pki, max_workers=2)
    service.add_federation_servicer(bound.server, svc)
    bound.server.start()
    return bound, svc


def _register(port: int, pki: Path, name: str) -> pb.RegisterResponse:
    creds = identity.load_client_credentials(pki, name)
    with tls.make_channel(f"127.0.0.1:{port}", pki, name) as ch:
        return FederationStub(ch).Register(pb.RegisterRequest(
            header=pb.RequestHeader(client_id=name),
            identity_public_key=identity.raw_public_key(creds.identity_public_key)), timeout=5)


@pytest.mark.parametrize("defence", [True, False])
def test_server_refuses_a_revoked_member_at_registration(pki: Path, defence: bool) -> None:
    revocation.revoke(pki, ["alice"])
    watch = revocation.RevocationWatch(pki / revocation.CRL_FILE, _ca(pki), reload_every_s=0) if defence else None
    bound, _ = _serve_with_watch(pki, watch)
    try:
        assert _register(bound.port, pki, "bob").client_id == "bob"  # an honest member gets in either way
        if not defence:  # negative control: without the list the revoked certificate is as good as any
            assert _register(bound.port, pki, "alice").client_id == "alice"
            return
        with pytest.raises(grpc.RpcError) as info:
            _register(bound.port, pki, "alice")
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        err = service.error_from_rpc(info.value)
        assert type(err) is errors.CertificateRevoked and "revoked" in str(err)  # typed, not a string match
    finally:
        bound.server.stop(None)


def test_a_member_revoked_after_registering_is_refused_at_its_next_call(pki: Path) -> None:
    watch = revocation.RevocationWatch(pki / revocation.CRL_FILE, _ca(pki), reload_every_s=0)
    bound, svc = _serve_with_watch(pki, watch)
    try:
        for n in ("alice", "bob"):
            _register(bound.port, pki, n)
        assert svc.mailbox.connected() == ["alice", "bob"]
        revocation.revoke(pki, ["alice"])  # no restart: the server re-reads crl.pem
        assert svc.mailbox.connected() == ["bob"]  # never drawn into a cohort again
        with pytest.raises(grpc.RpcError) as info:
            _register(bound.port, pki, "alice")
        assert type(service.error_from_rpc(info.value)) is errors.CertificateRevoked
        assert _register(bound.port, pki, "bob").client_id == "bob"
    finally:
        bound.server.stop(None)


def test_mailbox_registration_and_cohort_pool_exclude_revoked(pki: Path) -> None:
    mb = Mailbox(threading.Condition(threading.RLock()), threading.Event(), poll_s=1.0, describe=lambda: "")
    der = {n: _cert(pki, n).public_bytes(serialization.Encoding.DER) for n in ("alice", "bob")}
    for n in ("alice", "bob"):
        mb.register(n, b"k" * 32, certificate=der[n])
    watch = revocation.RevocationWatch(pki / revocation.CRL_FILE, _ca(pki), reload_every_s=0)
    mb.is_revoked = watch.is_revoked
    assert mb.connected() == ["alice", "bob"]
    revocation.revoke(pki, ["alice"])
    assert mb.connected() == ["bob"]  # revoked since it registered: never drawn into a cohort
    with pytest.raises(errors.CertificateRevoked):
        mb.register("alice", b"k" * 32, certificate=der["alice"])


def test_keys_cli_days_revoke_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "k"
    assert cli.main(["keys", "init-ca", "--dir", str(d), "--days", "100"]) == 0
    assert cli.main(["keys", "issue-server", "--dir", str(d), "--days", "20"]) == 0
    assert cli.main(["keys", "issue-client", "carol", "--dir", str(d), "--days", "7"]) == 0
    for path, days in ((d / "ca.pem", 100), (d / "server.pem", 20), (d / "clients" / "carol.pem", 7)):
        c = x509.load_pem_x509_certificate(path.read_bytes())
        assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=days)
    assert cli.main(["keys", "issue-client", "dave", "--dir", str(d), "--days", "4000"]) == 2
    assert "--days must be a whole number of days from 1 to 3650" in capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(["keys", "revoke", "carol", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "revoked carol" in out and "revocation list #1" in out and "crl.pem" in out
    assert cli.main(["keys", "crl", "--dir", str(d), "--days", "3"]) == 0
    assert "revocation list #2 (1 certificate(s)" in capsys.readouterr().out
    # Every issued certificate is archived under its serial (what revoke reads).
    assert len(list((d / "issued").glob("*.pem"))) == 2
