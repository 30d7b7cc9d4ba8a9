"""End to end: a revoked member is refused by the server at registration, stops with one typed line, is
never drawn into a cohort, and the others complete the round with the list in every plan."""

from __future__ import annotations

import logging
import shutil

import pytest
from daemon_helpers import FAST_CLIENT, fast_server

from securefed.federation import provision, run_in_process
from securefed.server.roundlog import AttemptStatus, RoundLog
from securefed.transport import revocation

pytestmark = pytest.mark.slow


def test_a_revoked_member_is_refused_and_the_federation_goes_on(tmp_path, tiny_model, caplog):
    own_pki = tmp_path / "member-4-pki"
    p = provision(tmp_path, 4, mode="secagg", rounds=1, threshold=2, min_clients=3, model_dir=tiny_model,
                  server={**fast_server(), "federation": {"cohort_size": 3, "max_colluding_members": 0}}, client=FAST_CLIENT,
                  per_client={"member-4": {"client": {"credentials_dir": str(own_pki)}}})
    shutil.copytree(p.pki, own_pki)  # member-4 was provisioned before its revocation: it does not know
    lst, _ = revocation.revoke(p.pki, ["member-4"])  # the operator revokes; the server's pki has crl.pem
    with caplog.at_level(logging.INFO, logger="securefed"):
        res = run_in_process(p, timeout_s=240)
    assert res.ok
    assert res.client_exit["member-4"] == 2  # stopped, not "server unreachable, retrying" forever
    assert all(res.client_exit[m] == 0 for m in ("member-1", "member-2", "member-3"))
    stopped = [r for r in caplog.records if r.getMessage() == "stopped: certificate problem"]
    assert len(stopped) == 1 and "revoked" in str(stopped[0].securefed_fields["error"])
    assert any(r.getMessage() == "refused a revoked member" and r.levelno == logging.WARNING for r in caplog.records)
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    try:
        attempts = log.attempts()
    finally:
        log.close()
    assert attempts[-1].status is AttemptStatus.COMPLETED
    assert all("member-4" not in a.cohort for a in attempts)
    # The plans carried the list: each member holds it, checked against the CA it pins.
    for m in ("member-1", "member-2", "member-3"):
        newest = res.clients[m].certificates.revocations.newest
        assert newest is not None and newest.serials == lst.serials
