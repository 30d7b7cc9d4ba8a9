"""A worker rank SIGKILLed in the middle of a step: the member's attempt ends before anything is
released or spent, and the member recovers on the next attempt (the real daemon, its server played by
the test, plaintext rounds so that a release is visible at once)."""

from __future__ import annotations

import logging

import pytest
from member_harness import Federation, offer, run

from securefed.distributed.checks import cpu_cores
from securefed.faults import FAULT_ENV
from securefed.logs import _FIELDS_ATTR
from securefed.privacy.ledger import load_ledger
from securefed.protocol.plan import seal_plan
from securefed.transport._generated import federation_pb2 as pb

pytestmark = [pytest.mark.slow, pytest.mark.skipif(cpu_cores() < 2, reason="two ranks need two cores")]


def test_distributed_killed_rank_releases_and_spends_nothing(tmp_path, tiny_model, monkeypatch, caplog):
    fed = Federation(tmp_path, tiny_model, client={
        "model": {"device": "cpu", "processes": 2},
        "client": {"planned_rounds": 20, "allow_plaintext_for_debugging": True}})
    daemon, server, watch = fed.member()
    honest, digest = fed.honest_bundle()
    for attempt in (1, 2):
        plan = fed.plan(attempt, digest)
        plan.mode = pb.AGGREGATION_MODE_PLAINTEXT
        offer(server, attempt, seal_plan(plan), honest)
    server.bundles[-1] = (0, honest)
    monkeypatch.setenv(FAULT_ENV, "kill@rank:step1#1")  # rank 1 dies after receiving its rows of step 1, attempt 1
    with caplog.at_level(logging.WARNING, logger="securefed"):
        assert run(daemon) == 0
    reasons = [str(getattr(r, _FIELDS_ATTR, {}).get("reason")) for r in caplog.records]
    assert len([r for r in reasons if "rank 1 of 2 ended (exit code -9)" in r]) == 1, reasons
    assert server.accepted() == [1, 2]
    # attempt 1: accepted, then the dead rank ended it: no upload, no privacy report, no ledger entry
    assert watch.released_attempts == [2]
    assert [a for a, kind, _ in server.sent if kind == "upload_masked"] == [2]
    assert [a for a, kind, _ in server.sent if kind == "ReportPrivacyEvent"] == [2]
    ledger = load_ledger(daemon.ledger.path)
    assert [e.round_id for e in ledger.events] == [2]  # one spend: the attempt that released
