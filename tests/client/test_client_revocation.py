"""The member and the federation's revocation list: what it declines (a revoked cohort member, an older,
expired, missing or forged list), what it remembers across restarts, and its own certificate at start-up;
and a member whose server presents a certificate from another CA stops with the fix instead of retrying."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securefed.client.cohort import MemberRevocations, verify_cohort
from securefed.client.config import ClientConfig
from securefed.client.daemon import ClientDaemon
from securefed.client.pull_loop import EXIT_CERTIFICATE, EXIT_SERVER_UNREACHABLE, serve
from securefed.config import parse_model
from securefed.errors import CertificateError, CertificateRevoked
from securefed.protocol.plan import seal_plan
from securefed.transport import identity as tid
from securefed.transport import revocation, service, tls
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.messages import FederationServicer

pytestmark = pytest.mark.timeout(60)

NAMES = ("alice", "bob", "carol")


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    tid.init_ca(d)
    tid.issue_server(d, ["127.0.0.1", "localhost"])
    for n in NAMES:
        tid.issue_client(d, n)
    return d


def _member(d: Path, name: str) -> pb.CohortMember:
    creds = tid.load_client_credentials(d, name)
    der = x509.load_pem_x509_certificate(creds.certificate_pem).public_bytes(serialization.Encoding.DER)
    return pb.CohortMember(client_id=name, identity_public_key=tid.raw_public_key(creds.identity_public_key),
                           certificate=der)


def _plan(d: Path, crl: bytes = b"") -> pb.RoundPlan:
    return seal_plan(pb.RoundPlan(round=3, global_adapter_sha256=b"\x01" * 32, mode=pb.AGGREGATION_MODE_SECAGG,
                                  vector_length=4, cohort=[_member(d, n) for n in NAMES],
                                  secagg=pb.SecAggParams(threshold=2), revocation_list=crl))


def _ca(d: Path) -> x509.Certificate:
    return tid.load_ca_certificate(d)


def test_a_revoked_cohort_member_is_declined_and_without_the_list_it_would_pass(pki: Path, tmp_path: Path) -> None:
    lst, _ = revocation.revoke(pki, ["carol"])
    plan = _plan(pki, lst.der)
    # Negative control: the certificate itself is impeccable; only the list tells a member it is revoked.
    verify_cohort(_ca(pki), plan)
    assert MemberRevocations(_ca(pki), tmp_path / "state.crl").decline_reason(_plan(pki)) is None
    reason = MemberRevocations(_ca(pki), tmp_path / "s2.crl").decline_reason(plan)
    assert reason is not None and "cohort member 'carol' has a revoked certificate" in reason


def test_the_newest_list_is_remembered_and_cannot_be_rolled_back(pki: Path, tmp_path: Path) -> None:
    first = revocation.refresh(pki)  # #1, empty
    second, _ = revocation.revoke(pki, ["carol"])  # #2
    state = tmp_path / "state" / "revocations.crl"
    m = MemberRevocations(_ca(pki), state)
    assert m.decline_reason(_plan(pki, first.der)) is None
    assert "revoked certificate" in m.decline_reason(_plan(pki, second.der))
    restarted = MemberRevocations(_ca(pki), state)  # a restart reads what it saw
    assert restarted.newest is not None and restarted.newest.number == 2
    older = restarted.decline_reason(_plan(pki, first.der))  # the list from before carol was revoked
    assert older is not None and "older than #2" in older
    none = restarted.decline_reason(_plan(pki, b""))
    assert none is not None and "carries no revocation list" in none


def test_forged_and_expired_lists_are_declined(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tid.init_ca(other)
    tid.issue_client(other, "carol")
    forged, _ = revocation.revoke(other, ["carol"])
    m = MemberRevocations(_ca(pki), tmp_path / "s.crl")
    assert "not signed by the federation CA" in m.decline_reason(_plan(pki, forged.der))
    stale = revocation.sign_list(tid.load_ca(pki), [], 5, days=1,
                                 now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
    reason = m.decline_reason(_plan(pki, stale.der))
    assert reason is not None and "has expired" in reason and "keys crl" in reason
    assert m.newest is None  # an expired list is not adopted


def test_the_provisioned_list_counts_from_the_start(pki: Path, tmp_path: Path) -> None:
    revocation.revoke(pki, ["carol"])
    m = MemberRevocations(_ca(pki), tmp_path / "s.crl", pki / revocation.CRL_FILE)
    assert m.newest is not None and "carries no revocation list" in m.decline_reason(_plan(pki))
    with pytest.raises(CertificateRevoked):
        m.check_own(tid.load_client_credentials(pki, "carol").certificate_pem)
    m.check_own(tid.load_client_credentials(pki, "alice").certificate_pem)


def _config(pki: Path, tmp_path: Path, name: str = "alice", server: str = "127.0.0.1:1", **conn) -> ClientConfig:
    return parse_model(ClientConfig, {
        "client": {"name": name, "server": server, "credentials_dir": str(pki), "state_dir": str(tmp_path / "s"),
                   "ledger_path": str(tmp_path / "s" / "ledger.sqlite"), "base_model_dir": str(tmp_path / "m")},
        "data": {"demo_client": 0, "demo_clients": 3},
        "privacy": {"target_epsilon": 8.0, "delta": 1e-5},
        "connection": {"backoff_initial_s": 0.1, "backoff_max_s": 0.2, "give_up_after_s": 1.5, **conn},
    })


def test_start_up_refuses_an_expired_or_revoked_own_certificate(pki: Path, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    tid.issue_client(pki, "dave", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1))
    with pytest.raises(CertificateError, match="this member's certificate expired on"):
        ClientDaemon(_config(pki, tmp_path, "dave"))
    revocation.revoke(pki, ["bob"])
    with pytest.raises(CertificateRevoked, match="revoked"):
        ClientDaemon(_config(pki, tmp_path, "bob"))


class _Status(FederationServicer):
    pass


def test_a_server_certificate_from_another_ca_stops_the_member_with_the_fix(pki: Path, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    rogue = tmp_path / "rogue"
    tid.init_ca(rogue)
    tid.issue_server(rogue, ["127.0.0.1"])
    bound = tls.make_server("127.0.0.1:0", rogue, max_workers=2)
    service.add_federation_servicer(bound.server, _Status())
    bound.server.start()
    try:
        daemon = ClientDaemon(_config(pki, tmp_path, server=f"127.0.0.1:{bound.port}", give_up_after_s=30.0))
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="securefed"):
            code = serve(daemon)
        daemon.close()
    finally:
        bound.server.stop(None)
    assert code == EXIT_CERTIFICATE and time.monotonic() - t0 < 20  # not "retrying" until give_up_after_s
    stopped = [r for r in caplog.records if r.getMessage() == "stopped: certificate problem"]
    assert stopped and stopped[0].levelno == logging.ERROR
    assert "did not issue" in str(stopped[0].securefed_fields["error"])


def test_a_server_that_is_merely_down_is_still_retried(pki: Path, tmp_path: Path) -> None:
    daemon = ClientDaemon(_config(pki, tmp_path))  # 127.0.0.1:1: connection refused
    try:
        assert serve(daemon) == EXIT_SERVER_UNREACHABLE
    finally:
        daemon.close()
