"""Transfers on loopback (JSON on stdout): framing overhead, memory on each side, resumption through cuts.

Everything is the real transport: the server (``securefed.server``, gRPC over mutual TLS, a plaintext
round with a synthetic adapter, no model) in a process of its own, a member (``client.connection``)
in this one, and between them the TCP relay of ``tests/transport/tcp_relay.py``, which counts every
byte on the wire (TLS records, HTTP/2 frames, gRPC and protobuf framing, polls included).

Records, per payload size, measured in the same run:

* ``transfer``: one upload (a ring vector) and one download (the global adapter bundle) without
  cuts: ``framing_overhead`` = wire bytes / payload bytes - 1 in the transfer's direction (target
  <= 0.10); the peak RSS rise of the server process and of the member process during each transfer,
  over the payload (``*_peak_rss_per_payload``: the receiver must hold what it received, so about
  1.0 is the floor; the sender streams from the buffer it already has, so about 0). The server's
  driver is told to drop the upload, so what is measured is the transport, not the aggregation.
* ``resume``: a whole round with one member behind the relay cutting its connection every quarter
  of the payload, up to five times each way: wire bytes over payload (target < 2).

    python bench/transfer.py --json            # 8, 32 and 128 MiB
    python bench/transfer.py --json --quick    # 8 MiB
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "transport"))  # the relay and the round harness live with the tests

from tcp_relay import DOWN, UP, CuttingRelay  # noqa: E402
from transfer_harness import MEMBERS, identity_key, make_pki, member_config, run_round, start_server  # noqa: E402

from securefed.client.connection import Connection  # noqa: E402
from securefed.transport._generated import federation_pb2 as pb  # noqa: E402
from securefed.transport.limits import MIB, TRANSFER_CHUNK_BYTES  # noqa: E402


def _status(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class PeakRss:
    """Peak RSS rise of a process over a block (Linux: VmHWM, reset through clear_refs)."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid

    def __enter__(self) -> "PeakRss":
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = _status(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.rise = _status(self.pid, "VmHWM") - self.before


def serve(tmp: Path, dim: int) -> None:
    """The child process: the server, its driver dropping uploads (the transport is what is measured)."""
    from securefed.server.plaintext_driver import PlaintextDriver

    def drop(self, phase, client, stage, ring_bits, data):
        phase.responded.add(client)

    PlaintextDriver.on_masked_upload = drop
    app = start_server(tmp, tmp / "pki", dim, training_s=600.0)
    print(app.port, flush=True)
    app.run()  # until the parent has measured and kills it


def transfer_case(dim: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    pki = make_pki(tmp / "pki", names=MEMBERS)
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp), str(dim)], stdout=subprocess.PIPE,
                             text=True)
    try:
        port = int(child.stdout.readline())
        with CuttingRelay(port) as relay:
            direct = f"127.0.0.1:{port}"
            conns = {n: Connection(member_config(pki, tmp, n, relay.address if n == "m1" else direct))
                     for n in MEMBERS}
            for n, c in conns.items():
                c.open()
                c.register(identity_key(pki, n))
            plan = None
            for c in conns.values():
                while True:
                    task = c.poll(0, 0.5)
                    if task.WhichOneof("body") == "plan":
                        plan = task.plan
                        break
            attempt = int(plan.round)
            conns["m2"].download(attempt)  # the server reads the adapter once; later downloads reuse it
            m1 = conns["m1"]
            up0, down0 = relay.bytes[UP], relay.bytes[DOWN]
            with PeakRss(child.pid) as srv, PeakRss() as mem:
                t0 = time.perf_counter()
                got = m1.download(attempt)
                download_s = time.perf_counter() - t0
            wire_down = relay.bytes[DOWN] - down0
            down_srv, down_mem = srv.rise, mem.rise
            data = np.arange(int(plan.vector_length), dtype="<u4").tobytes()
            m1.submit(m1.header(attempt, pb.STAGE_PLAN, bytes(plan.plan_sha256)),
                      plan_decision=pb.PlanDecision(participate=True))
            up0, down0 = relay.bytes[UP], relay.bytes[DOWN]
            with PeakRss(child.pid) as srv, PeakRss() as mem:
                t0 = time.perf_counter()
                m1.upload_masked(m1.header(attempt, pb.STAGE_PLAINTEXT_UPLOAD), 32, data)
                upload_s = time.perf_counter() - t0
            wire_up = relay.bytes[UP] - up0
            for c in conns.values():
                c.close()
    finally:
        child.kill()
        child.wait(10)
    return {
        "case": "transfer", "payload_mb": round(len(data) / MIB, 1), "chunk_bytes": TRANSFER_CHUNK_BYTES,
        "upload_payload_bytes": len(data), "upload_wire_bytes": wire_up,
        "upload_framing_overhead": round(wire_up / len(data) - 1, 5), "upload_s": round(upload_s, 3),
        "upload_server_peak_rss_per_payload": round(srv.rise / len(data), 3),
        "upload_member_peak_rss_per_payload": round(mem.rise / len(data), 3),
        "download_payload_bytes": got.nbytes, "download_wire_bytes": wire_down,
        "download_framing_overhead": round(wire_down / got.nbytes - 1, 5), "download_s": round(download_s, 3),
        "download_server_peak_rss_per_payload": round(down_srv / got.nbytes, 3),
        "download_member_peak_rss_per_payload": round(down_mem / got.nbytes, 3),
        "target_framing_overhead": 0.10,
    }


def resume_case(dim: int, cuts: int = 5) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    pki = make_pki(tmp / "pki")
    app = start_server(tmp, pki, dim)
    upload = (dim + 1) * 4
    try:
        with CuttingRelay(app.port) as relay:
            relay.cut(UP, upload // 4, cuts)
            relay.cut(DOWN, upload // 4, cuts)
            t0 = time.perf_counter()
            app, runs, ok = run_round(tmp, pki, dim, via={"m1": relay.address}, server=app)
            round_s = time.perf_counter() - t0
    finally:
        app.stop(grace=0.2)
    m1 = runs["m1"]
    return {
        "case": "resume", "payload_mb": round(upload / MIB, 1), "round_completed": ok, "round_s": round(round_s, 3),
        "cuts_up": relay.plans[0].done, "cuts_down": relay.plans[1].done, "resumes": m1.connection.counts.resumes,
        "upload_payload_bytes": m1.upload_bytes, "upload_wire_bytes": relay.bytes[UP],
        "upload_wire_per_payload": round(relay.bytes[UP] / m1.upload_bytes, 3),
        "download_payload_bytes": m1.download_bytes, "download_wire_bytes": relay.bytes[DOWN],
        "download_wire_per_payload": round(relay.bytes[DOWN] / m1.download_bytes, 3),
        "target_wire_per_payload": 2.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON array (default: one record per line)")
    ap.add_argument("--quick", action="store_true", help="8 MiB only")
    ap.add_argument("--serve", nargs=2, metavar=("DIR", "DIM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(Path(args.serve[0]), int(args.serve[1]))
    dims = [2 << 20] if args.quick else [2 << 20, 8 << 20, 32 << 20]
    cores = os.cpu_count()
    records = []
    for dim in dims:
        records.append({**transfer_case(dim), "cores": cores})
    records.append({**resume_case(2 << 20), "cores": cores})
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        for r in records:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
