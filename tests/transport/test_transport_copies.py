"""No full-payload copies in the transport: a 32 MiB upload and a 32 MiB download through the real server
over mutual TLS (member and server in this one process) raise its peak RSS by about one payload (the
receiver's buffer) plus chunks in flight and gRPC's buffers, and the buffer the round is handed is the
very one the chunks were written into. A second copy of the payload anywhere would double the rise."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from transfer_harness import MEMBERS, identity_key, make_pki, member_config, rss_rise, start_server

from securefed.client.connection import Connection
from securefed.server.plaintext_driver import PlaintextDriver
from securefed.transport._generated import federation_pb2 as pb

pytestmark = pytest.mark.timeout(120)

DIM = 8 << 20  # 8M parameters: a 32 MiB upload (ring 2^32) and a 32 MiB adapter
ONE_AND_A_HALF = 1.5  # one payload of buffer, plus chunks in flight, gRPC's windows and allocator noise


def test_upload_and_download_hold_one_payload_and_no_copy_of_it(tmp_path, monkeypatch):
    handed: dict[str, object] = {}

    def record(self, phase, client, stage, ring_bits, data):  # the transport's view ends here
        handed[client] = data
        phase.responded.add(client)

    monkeypatch.setattr(PlaintextDriver, "on_masked_upload", record)
    pki = make_pki(tmp_path / "pki", names=MEMBERS)
    app = start_server(tmp_path, pki, DIM, training_s=90.0)
    loop = threading.Thread(target=app.run, daemon=True)
    loop.start()
    conns = {n: Connection(member_config(pki, tmp_path, n, f"127.0.0.1:{app.port}")) for n in MEMBERS}
    try:
        plan = None
        for n, c in conns.items():
            c.open()
            c.register(identity_key(pki, n))
        for c in conns.values():
            end = time.monotonic() + 30
            while time.monotonic() < end:
                task = c.poll(0, 0.5)
                if task.WhichOneof("body") == "plan":
                    plan = task.plan
                    break
        assert plan is not None
        attempt = int(plan.round)
        conns["m2"].download(attempt)  # the server reads the adapter file once; later downloads reuse it
        size = len(app.coordinator.mailbox._adapter[1])
        peak_down, _, got = rss_rise(lambda: conns["m1"].download(attempt))
        assert got.nbytes == size and isinstance(got.parts[0], memoryview)  # the receive buffer itself
        assert peak_down < ONE_AND_A_HALF * size, (peak_down, size)

        data = np.arange(DIM + 1, dtype="<u4").tobytes()
        c = conns["m1"]
        c.submit(c.header(attempt, pb.STAGE_PLAN, bytes(plan.plan_sha256)),
                 plan_decision=pb.PlanDecision(participate=True))
        peak_up, _, _ = rss_rise(lambda: c.upload_masked(c.header(attempt, pb.STAGE_PLAINTEXT_UPLOAD), 32, data))
        buf = handed["m1"]
        assert isinstance(buf, memoryview) and buf == data  # one buffer, written in place, handed over
        assert peak_up < ONE_AND_A_HALF * len(data), (peak_up, len(data))
    finally:
        for conn in conns.values():
            conn.close()
        app.coordinator.stop()
        loop.join(10)
        app.stop(grace=0.2)
