"""Sybil and revocation attacks not tried before (issue 17), over real mutual TLS against the real servicer.

1. A revoked member comes back under its name with a new identity key: with its revoked certificate
   (refused as revoked, whatever key it claims), or with a certificate it made itself for the name
   (refused by TLS). Control: the operator's reissued certificate gets in while the old one stays out.
2. An older, still valid revocation list replayed after a newer one: the server's watch keeps the newer
   list, and a member that saw the newer list declines plans carrying the older one. Control: a member
   that never saw the newer list accepts the older (the documented residual: revocation hidden for a while).
3. A certificate from a second CA placed beside the real one in ``ca.pem``: gRPC would trust both. The
   server and members refuse such a ``ca.pem`` with one line, and the servicer also checks every caller's
   certificate against the pinned CA. Control: without both, the rogue "member" registers.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefed import errors
from securefed.client.cohort import MemberRevocations, verify_member
from securefed.config import parse_model
from securefed.protocol.plan import seal_plan
from securefed.server.config import ServerConfig
from securefed.server.culprits import Culprits
from securefed.server.mailbox import Mailbox
from securefed.server.security_log import read_alerts
from securefed.server.service import FederationService
from securefed.transport import identity, revocation, service, tls
from securefed.transport.messages import FederationStub, pb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    identity.init_ca(d)
    identity.issue_server(d, ["127.0.0.1", "localhost"])
    for n in ("alice", "bob", "carol"):
        identity.issue_client(d, n)
    return d


class _Coordinator:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.config = parse_model(ServerConfig, {"server": {"credentials_dir": ".", "state_dir": str(state_dir),
                                                            "base_model_dir": "."}})
        self.mailbox = Mailbox(threading.Condition(threading.RLock()), threading.Event(), poll_s=1.0,
                               describe=lambda: "")
        self.culprits = Culprits(state_dir)

    def status(self) -> dict:
        return {"attempt": 0}


def _serve(pki: Path, **kw):
    svc = FederationService(_Coordinator(pki.parent / "server-state"), **kw)  # type: ignore[arg-type]
    bound = tls.make_server("127.0.0.1:0", pki, max_workers=2)
    service.add_federation_servicer(bound.server, svc)
    bound.server.start()
    return bound, svc


def _register(port: int, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, name: str, identity_key: bytes):
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        return FederationStub(ch).Register(pb.RegisterRequest(header=pb.RequestHeader(client_id=name),
                                                              identity_public_key=identity_key), timeout=5)


def _files(d: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """(certificate, TLS key, raw identity public key) of ``name`` in CA directory ``d``."""
    creds = identity.load_client_credentials(d, name)
    return creds.certificate_pem, creds.private_key_pem, identity.raw_public_key(creds.identity_public_key)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_revoked_member_cannot_come_back_under_its_name_with_a_new_key(pki: Path, tmp_path: Path) -> None:
    ca_pem = (pki / "ca.pem").read_bytes()
    old_cert, old_key, _ = _files(pki, "alice")
    revocation.revoke(pki, ["alice"])
    watch = revocation.RevocationWatch(pki / revocation.CRL_FILE, identity.load_ca_certificate(pki), reload_every_s=0)
    bound, svc = _serve(pki, revocations=watch)
    new_identity = _raw(Ed25519PrivateKey.generate())
    try:
        # (a) its revoked certificate, a fresh identity key: refused as revoked before the key is looked at.
        with pytest.raises(grpc.RpcError) as info:
            _register(bound.port, ca_pem, old_cert, old_key, "alice", new_identity)
        assert type(service.error_from_rpc(info.value)) is errors.CertificateRevoked
        # (b) a certificate it issued itself for the name, binding the new key: TLS does not let it in.
        own = tmp_path / "own-ca"
        identity.init_ca(own)
        identity.issue_client(own, "alice")
        forged_cert, forged_key, forged_identity = _files(own, "alice")
        with pytest.raises(grpc.RpcError) as info:
            _register(bound.port, ca_pem, forged_cert, forged_key, "alice", forged_identity)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "alice" not in svc.mailbox.clients
        # Control: the operator reissues alice (new serial, new key): that one gets in, the old stays out.
        identity.issue_client(pki, "alice", force=True)
        cert2, key2, ident2 = _files(pki, "alice")
        assert _register(bound.port, ca_pem, cert2, key2, "alice", ident2).client_id == "alice"
        with pytest.raises(grpc.RpcError):
            _register(bound.port, ca_pem, old_cert, old_key, "alice", new_identity)
    finally:
        bound.server.stop(None)
    tries = [a for a in read_alerts(pki.parent / "server-state") if a["kind"] == "revoked certificate used"]
    assert [a["client"] for a in tries] == ["alice", "alice"]  # each try is in the operator's view
    # And members: the revoked certificate vouches for its old key only, never for the new one.
    old_der = x509.load_pem_x509_certificate(old_cert).public_bytes(serialization.Encoding.DER)
    with pytest.raises(errors.ProtocolAbort):
        verify_member(identity.load_ca_certificate(pki), old_der, "alice", new_identity)


def _plan(d: Path, crl: bytes) -> pb.RoundPlan:
    members = []
    for n in ("alice", "bob", "carol"):
        cert, _, key = _files(d, n)
        der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
        members.append(pb.CohortMember(client_id=n, identity_public_key=key, certificate=der))
    return seal_plan(pb.RoundPlan(round=3, global_adapter_sha256=b"\x01" * 32, mode=pb.AGGREGATION_MODE_SECAGG,
                                  vector_length=4, cohort=members, secagg=pb.SecAggParams(threshold=2),
                                  revocation_list=crl))


def test_an_older_still_valid_list_replayed_after_a_newer_one_is_refused(pki: Path, tmp_path: Path) -> None:
    first, _ = revocation.revoke(pki, ["alice"])  # #1: alice
    second, _ = revocation.revoke(pki, ["bob"])  # #2: alice and bob; #1 is still valid for 30 days
    assert not first.expired() and second.number == first.number + 1
    ca = identity.load_ca_certificate(pki)
    # The server: crl.pem put back to #1 (a restored backup, a replay) un-revokes nobody.
    watch = revocation.RevocationWatch(pki / revocation.CRL_FILE, ca, reload_every_s=0)
    bob = x509.load_pem_x509_certificate(_files(pki, "bob")[0])
    assert watch.is_revoked(bob)
    (pki / revocation.CRL_FILE).write_bytes(first.pem)
    os.utime(pki / revocation.CRL_FILE, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert watch.is_revoked(bob) and watch.current().number == 2
    # A member that saw #2 declines a plan carrying #1 (which would let bob into its cohort).
    m = MemberRevocations(ca, tmp_path / "member" / "revocations.crl")
    assert "revoked certificate" in m.decline_reason(_plan(pki, second.der))
    reason = m.decline_reason(_plan(pki, first.der))
    assert reason is not None and "older than #2" in reason
    # Control: a member that never saw #2 takes #1, and bob with it (revocation hidden until #1 expires).
    fresh = MemberRevocations(ca, tmp_path / "fresh" / "revocations.crl")
    assert "'alice'" in (fresh.decline_reason(_plan(pki, first.der)) or "")
    identity.issue_client(pki, "alice", force=True)  # alice reissued: now only the list decides about bob
    assert MemberRevocations(ca, tmp_path / "fresh2" / "revocations.crl").decline_reason(_plan(pki, first.der)) is None


def test_a_second_ca_beside_the_real_one_lets_no_one_in(pki: Path, tmp_path: Path, monkeypatch) -> None:
    rogue = tmp_path / "rogue"
    identity.init_ca(rogue)
    identity.issue_client(rogue, "mallory")
    real_ca = (pki / "ca.pem").read_bytes()
    (pki / "ca.pem").write_bytes(real_ca + (rogue / "ca.pem").read_bytes())
    # Defence 1: neither the server nor a member loads such a ca.pem; one line says what to fix.
    with pytest.raises(errors.ConfigError, match="holds 2 certificates; it must hold exactly one"):
        tls.make_server("127.0.0.1:0", pki)
    with pytest.raises(errors.ConfigError, match="holds 2 certificates"):
        identity.load_client_credentials(pki, "alice")
    # Without defence 1 gRPC trusts both CAs; defence 2, the servicer's own check, still refuses mallory.
    monkeypatch.setattr(identity, "load_ca_pem", lambda d: identity._as_dir(d).ca_cert.read_bytes())
    mallory = _files(rogue, "mallory")
    pinned = x509.load_pem_x509_certificate(real_ca)
    bound, svc = _serve(pki, ca=pinned)
    try:
        with pytest.raises(grpc.RpcError) as info:
            _register(bound.port, real_ca, mallory[0], mallory[1], "mallory", mallory[2])
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "mallory" not in svc.mailbox.clients
        alice = _files(pki, "alice")
        assert _register(bound.port, real_ca, alice[0], alice[1], "alice", alice[2]).client_id == "alice"
    finally:
        bound.server.stop(None)
    assert [a["kind"] for a in read_alerts(pki.parent / "server-state")] == ["certificate from another CA"]
    # Control: with neither defence, the certificate the federation never issued registers as a member.
    bound, svc = _serve(pki)
    try:
        assert _register(bound.port, real_ca, mallory[0], mallory[1], "mallory", mallory[2]).client_id == "mallory"
        assert "mallory" in svc.mailbox.clients
    finally:
        bound.server.stop(None)
