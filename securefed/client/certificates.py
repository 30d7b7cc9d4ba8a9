"""The member's certificates: its own checked at start-up, TLS failures explained, revocation kept.

* At start-up the member's own certificate must be from the CA in ``ca.pem``, valid now and not on the
  newest revocation list it knows (``CertificateError``: one line, exit 2); fewer than 30 days left is
  a warning.
* When a call fails as "unavailable", ``explain_failure`` asks ``transport.diagnose`` whether a
  certificate is the cause (another CA, expired or not yet valid, a host name the server certificate
  does not name, this member refused or revoked): then the member stops with that line and its fix
  instead of retrying forever. A server that is merely down is retried as before.
* ``decline_reason`` is the revocation verdict on a plan (``cohort.MemberRevocations``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography import x509

from securefed.client.cohort import MemberRevocations
from securefed.client.config import ClientConfig
from securefed.logs import get_logger, log
from securefed.transport.diagnose import EXPIRY_WARNING_DAYS, check_own_certificate, diagnose
from securefed.transport.identity import ClientCredentials
from securefed.transport.revocation import CRL_FILE

logger = get_logger("client")

REVOCATION_STATE_FILE = "revocations.crl"


class MemberCertificates:
    def __init__(self, config: ClientConfig, creds: ClientCredentials, ca: x509.Certificate) -> None:
        c = config.client
        self._config = config
        self.revocations = MemberRevocations(ca, Path(c.state_dir) / REVOCATION_STATE_FILE,
                                             Path(c.credentials_dir) / CRL_FILE)
        days = check_own_certificate(creds.certificate_pem, ca, revocations=self.revocations.newest)
        if days < EXPIRY_WARNING_DAYS:
            log(logger, "this member's certificate expires soon: ask the operator for a new one", level=logging.WARNING,
                days_left=days)

    def explain_failure(self) -> None:
        """Raise ``CertificateError`` when the failed connection is a certificate problem."""
        c = self._config.client
        diagnose(c.server, c.credentials_dir, c.name, server_name=c.server_name,
                 revocations=self.revocations.newest).raise_if_problem()

    def decline_reason(self, plan) -> str | None:
        return self.revocations.decline_reason(plan)
