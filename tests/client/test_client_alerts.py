"""Which failures are security events on the member's side (ERROR + reported), which are ordinary."""

from __future__ import annotations

import pytest

from securefed.client import alerts
from securefed.client.admission import check_plan
from securefed.client.cohort import load_ca
from securefed.errors import (
    CryptoError,
    InvalidMessage,
    LedgerConflict,
    ProtocolAbort,
    ReplayedMessage,
    SecureFedError,
    SecurityAlert,
    StaleMessage,
)
from securefed.protocol.plan import seal_plan
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb


def test_a_plan_no_honest_server_sends_becomes_a_security_alert(tmp_path):
    tid.init_ca(tmp_path)
    ca = load_ca((tmp_path / "ca.pem").read_bytes())
    key = b"\x01" * 32
    plan = seal_plan(pb.RoundPlan(round=4, federation_round=3, global_adapter_sha256=b"\x05" * 32, vector_length=9,
                                  mode=pb.AGGREGATION_MODE_SECAGG,
                                  cohort=[pb.CohortMember(client_id="alice", identity_public_key=key)]))
    plan.vector_length = 10  # changed after sealing: the digest no longer matches
    with pytest.raises(SecureFedError) as exc:
        check_plan(plan, "alice", key, ca)
    alert = alerts.refused_plan(exc.value, 4)
    assert isinstance(alert, SecurityAlert) and isinstance(alert, ProtocolAbort)  # the session ends as before
    assert alerts.alert_kind(alert) == "plan"
    assert str(alert).startswith("attempt 4: refused a plan no honest server sends: round plan digest")
    assert alerts.refused_plan(CryptoError("bad signature"), 4).kind == "authentication"


@pytest.mark.parametrize("exc, kind", [
    (SecurityAlert("adapter digest", kind="digest"), "digest"),
    (LedgerConflict("ledger entry 0 of m differs from the one reported before"), "ledger"),
    (CryptoError("server refused the request (PERMISSION_DENIED): identity key"), "authentication"),
    (StaleMessage("message for attempt 3, the current attempt is 4 (round 2)"), None),
    (ReplayedMessage("already answered this stage"), None),
    (InvalidMessage("incomplete download"), None),
    (ProtocolAbort("only 1 survivors, threshold is 2"), None),
])
def test_security_events_are_told_from_ordinary_session_endings_by_type(exc, kind):
    assert alerts.alert_kind(exc) == kind


def test_a_forked_ledger_refusal_reaches_the_member_as_its_own_type():
    # The server maps LedgerConflict to DATA_LOSS; the member maps it back (no message matching).
    import grpc

    from securefed.transport.service import error_from_rpc, status_for

    assert status_for(LedgerConflict("x")) is grpc.StatusCode.DATA_LOSS

    class _Failed(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.DATA_LOSS

        def details(self):
            return "ledger entry 3 of m does not chain to entry 2"

    assert isinstance(error_from_rpc(_Failed()), LedgerConflict)
