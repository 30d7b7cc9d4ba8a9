"""Security events on the member's side: which failures are one, and reporting them to the operator.

A check an honest server never makes a member fail (a plan no honest server sends, an adapter that
is not the announced one, its ledger called forked or rewound, a signature or certificate that does
not verify) is logged as an ERROR and reported with ``ReportSecurityAlert``, so that it shows in
``securefed status`` too. Ordinary session endings (late messages, a round aborted) are not.
"""

from __future__ import annotations

from securefed.client.connection import Connection
from securefed.errors import CryptoError, LedgerConflict, SecureFedError, SecurityAlert
from securefed.transport._generated import federation_pb2 as pb

KINDS = {"plan": pb.SECURITY_ALERT_KIND_PLAN_REFUSED, "digest": pb.SECURITY_ALERT_KIND_DIGEST_MISMATCH,
         "ledger": pb.SECURITY_ALERT_KIND_LEDGER_CONFLICT, "authentication": pb.SECURITY_ALERT_KIND_AUTHENTICATION}


def alert_kind(exc: BaseException) -> str | None:
    """The kind of security event ``exc`` is (a key of ``KINDS``), or None for an ordinary ending."""
    if isinstance(exc, SecurityAlert):
        return exc.kind
    if isinstance(exc, LedgerConflict):
        return "ledger"
    if isinstance(exc, CryptoError):
        return "authentication"
    return None


def refused_plan(exc: SecureFedError, attempt: int) -> SecurityAlert:
    if isinstance(exc, SecurityAlert):  # it says what it is (e.g. a field this member does not know)
        return SecurityAlert(f"attempt {attempt}: {exc}", kind=exc.kind)
    kind = "authentication" if isinstance(exc, CryptoError) else "plan"
    return SecurityAlert(f"attempt {attempt}: refused a plan no honest server sends: {exc}", kind=kind)


def report(connection: Connection, attempt: int, kind: str, detail: str) -> None:
    """Best effort: the member's own ERROR line stands whatever the server does with the report."""
    try:
        connection.call("ReportSecurityAlert", pb.SecurityAlertReport(
            header=connection.header(attempt, pb.STAGE_STATUS, sequenced=False),
            kind=KINDS.get(kind, pb.SECURITY_ALERT_KIND_UNSPECIFIED), detail=detail[:300]))
    except SecureFedError:
        pass
    except Exception:  # noqa: BLE001 - no channel (the link is down): nothing to report through
        pass
