"""The signed end of a federation (issue 19): the one message a member stops on. A known-good end
verifies; every forgery is refused: a field changed after signing, a server certificate of another
CA, a client's certificate instead of the server's, a revoked server certificate, another federation,
no signature. The member-side guard logs a refusal once and keeps the daemon up."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import pytest
from cryptography.hazmat.primitives import serialization

from securefed.client.federation_end import MemberEnd
from securefed.errors import CryptoError
from securefed.protocol.ending import seal_end, signed_bytes, verify_end
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ours, theirs = root / "ours", root / "theirs"
    for d in (ours, theirs):
        tid.init_ca(d)
        tid.issue_server(d, ["127.0.0.1"])
    tid.issue_client(ours, "site-a")
    return ours, theirs


def _end(**fields) -> pb.Done:
    body = dict(final_round=2, reason="all rounds completed", federation_id="consortium",
                global_adapter_sha256=bytes(range(32)), ending=pb.FEDERATION_ENDING_COMPLETED)
    body.update(fields)
    return pb.Done(**body)


def _server(d):
    c = tid.load_server_credentials(d)
    return c.certificate_pem, c.private_key_pem


def _ca(d):
    return tid.load_ca_certificate(d)


def test_a_signed_end_verifies_and_names_its_ending(pki):
    ours, _ = pki
    done = seal_end(_end(), *_server(ours))
    assert verify_end(done, _ca(ours), federation_id="consortium") == "completed"
    assert done.ended_at.endswith("Z") and len(done.signature) > 60
    assert signed_bytes(done).startswith(b"securefed/federation-end/v1\x00")


@pytest.mark.parametrize("field, value", [("final_round", 3), ("reason", "stopped"), ("federation_id", "other"),
                                          ("ending", pb.FEDERATION_ENDING_GAVE_UP), ("global_adapter_sha256", b"\0" * 32),
                                          ("ended_at", "2030-01-01T00:00:00Z")])
def test_any_field_changed_after_signing_is_refused(pki, field, value):
    ours, _ = pki
    done = seal_end(_end(), *_server(ours))
    setattr(done, field, value)
    with pytest.raises(CryptoError, match="does not verify"):
        verify_end(done, _ca(ours))


def test_an_end_signed_under_another_ca_is_refused(pki):
    ours, theirs = pki
    forged = seal_end(_end(), *_server(theirs))
    assert verify_end(forged, _ca(theirs)) == "completed"  # control: it is a valid end in its own federation
    with pytest.raises(CryptoError, match="did not issue"):
        verify_end(forged, _ca(ours))


def test_a_members_certificate_cannot_sign_an_end(pki):
    ours, _ = pki
    c = tid.load_client_credentials(ours, "site-a")  # issued by our CA, but for a client (no serverAuth)
    forged = seal_end(_end(), c.certificate_pem, c.private_key_pem)
    with pytest.raises(CryptoError, match="not a server's"):
        verify_end(forged, _ca(ours))


def test_a_revoked_or_expired_server_certificate_or_another_federation_is_refused(pki):
    ours, _ = pki
    done = seal_end(_end(), *_server(ours))
    from cryptography import x509

    serial = x509.load_der_x509_certificate(bytes(done.server_certificate)).serial_number
    with pytest.raises(CryptoError, match="revoked"):
        verify_end(done, _ca(ours), revoked_serials=frozenset({serial}))
    with pytest.raises(CryptoError, match="not valid now"):
        verify_end(done, _ca(ours), now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=4000))
    with pytest.raises(CryptoError, match="this member joined 'elsewhere'"):
        verify_end(done, _ca(ours), federation_id="elsewhere")


def test_an_unsigned_end_is_refused(pki):
    ours, _ = pki
    with pytest.raises(CryptoError, match="without the server's signature"):
        verify_end(_end(), _ca(ours))
    # a signature over the right bytes by a key that is not the certificate's
    done = seal_end(_end(), *_server(ours))
    other = tid.load_client_credentials(ours, "site-a")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(other.private_key_pem, password=None)
    done.signature = key.sign(signed_bytes(done), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(CryptoError, match="does not verify"):
        verify_end(done, _ca(ours))


class _NoConnection:
    def __init__(self) -> None:
        self.reported: list[str] = []

    def header(self, *a, **k):
        return pb.RequestHeader()

    def call(self, method, request, **k):
        self.reported.append(request.detail)


def test_the_member_waits_out_an_end_that_does_not_verify_and_stops_on_a_signed_one(pki, caplog):
    ours, theirs = pki
    conn = _NoConnection()
    guard = MemberEnd(_ca(ours), conn, threading.Event())  # type: ignore[arg-type]
    guard.federation_id = "consortium"
    import securefed.client.federation_end as fe

    fe.REFUSED_END_PAUSE_S, saved = 0.0, fe.REFUSED_END_PAUSE_S
    try:
        with caplog.at_level(logging.ERROR, logger="securefed"):
            for _ in range(3):  # the server repeats it at every poll: one ERROR line, one report
                assert guard.accept(_end()) is False
            assert guard.accept(seal_end(_end(), *_server(theirs))) is False
    finally:
        fe.REFUSED_END_PAUSE_S = saved
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and len(conn.reported) == 2 and guard.ending is None
    assert guard.accept(seal_end(_end(ending=pb.FEDERATION_ENDING_BUDGET_EXHAUSTED), *_server(ours)))
    assert guard.ending == "budget exhausted"
