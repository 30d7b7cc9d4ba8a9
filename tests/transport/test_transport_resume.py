"""Transfers survive dropped connections: a real TCP relay between one member and the real server (gRPC
over mutual TLS) cuts the connection in the middle of multi-MB uploads and downloads; the round
completes, every member ends on the same adapter, and the bytes sent stay under twice the payload.
The negative control restarts every transfer from zero on the same cuts: the round still completes
(the server takes repeats), but the bytes pass twice the payload, so the measure is what tells
resuming from restarting."""

from __future__ import annotations

import pytest
from tcp_relay import DOWN, UP, CuttingRelay
from transfer_harness import make_pki, run_round, start_server

import securefed.client.connection as connection_mod
from securefed.server.roundlog import AttemptStatus

pytestmark = pytest.mark.timeout(180)

DIM = 2 << 20  # 2M parameters: an 8 MiB upload (ring 2^32) and an 8 MiB adapter each way
UPLOAD = (DIM + 1) * 4  # FedAvg's payload is the adapter delta and the sample count
CUTS = 5  # bursts of a quarter of the upload: restarting from zero would send 5/4 + 1 of it


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _cut_round(tmp_path, pki):
    app = start_server(tmp_path, pki, DIM)
    try:
        with CuttingRelay(app.port) as relay:
            relay.cut(UP, UPLOAD // 4, CUTS)  # in the upload ...
            relay.cut(DOWN, UPLOAD // 4, CUTS)  # ... and in the two adapter downloads
            app, runs, ok = run_round(tmp_path, pki, DIM, via={"m1": relay.address}, server=app)
        errors = {n: r.error for n, r in runs.items() if r.error is not None}
        assert not errors, errors
        recs = app.coordinator.roundlog.attempts()
        return app, runs, ok, relay, recs
    finally:
        app.stop(grace=0.2)


def test_a_round_completes_through_dropped_connections_resending_less_than_the_payload(tmp_path, pki):
    app, runs, ok, relay, recs = _cut_round(tmp_path, pki)
    assert ok and [r.status for r in recs] == [AttemptStatus.COMPLETED]
    assert set(recs[0].survivors) == {"m1", "m2", "m3"}  # m1's cut upload is in the sum
    assert len({r.final_digest for r in runs.values()}) == 1  # everyone ends on the same adapter
    m1 = runs["m1"]
    counts = m1.connection.counts
    up_plan, down_plan = relay.plans
    # Cut mid-transfer, several times each way, and resumed every time.
    assert up_plan.done >= 3 and down_plan.done >= 2 and counts.resumes >= up_plan.done + down_plan.done
    assert counts.uploaded == m1.upload_bytes == UPLOAD and counts.downloaded == m1.download_bytes
    # The measure: bytes on the wire (TLS, HTTP/2, gRPC, polls included) under twice the payload.
    # (What a cut loses is what was in flight: TCP and HTTP/2 buffers, a partly received chunk.)
    assert relay.bytes[UP] < 2 * UPLOAD, (relay.bytes, counts)
    assert relay.bytes[DOWN] < 2 * m1.download_bytes, (relay.bytes, counts)
    assert counts.received < 2 * m1.download_bytes


def test_negative_control_restarting_from_zero_on_the_same_cuts_resends_more_than_the_payload(
        tmp_path, pki, monkeypatch):
    real_slices = connection_mod.slices
    monkeypatch.setattr(connection_mod, "slices", lambda vs, start, chunk: real_slices(vs, 0, chunk))
    monkeypatch.setattr(connection_mod._Incoming, "committed", property(lambda self: 0))
    monkeypatch.setattr(connection_mod._Incoming, "sha256", property(lambda self: b""))
    app, runs, ok, relay, recs = _cut_round(tmp_path, pki)
    assert ok and [r.status for r in recs] == [AttemptStatus.COMPLETED]
    assert relay.plans[0].done == CUTS
    assert relay.bytes[UP] > 2 * UPLOAD  # the measure above fails without resumption
