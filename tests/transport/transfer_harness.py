"""A real coordinator (plaintext mode, a synthetic multi-MB adapter, no model) behind real gRPC over
mutual TLS, and members that speak the protocol through the real ``client.connection.Connection``.

Everything on the wire is what a federation runs; only local training is replaced by a fixed update,
so a transfer test takes seconds. Imported as a plain module by the tests in tests/transport and by
bench/transfer.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization

from securefed.client.config import ClientConfig
from securefed.client.connection import Connection
from securefed.config import parse_model
from securefed.protocol.bundle import decode_bundle
from securefed.protocol.plaintext import encode_upload
from securefed.server.app import ServerApp
from securefed.server.config import ServerConfig
from securefed.transport import identity
from securefed.transport._generated import federation_pb2 as pb

MEMBERS = ("m1", "m2", "m3")


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_rise(fn) -> tuple[int, int, object]:
    """(peak RSS rise, RSS rise at the end, fn's result) of this process over ``fn()`` (Linux: VmHWM,
    reset through /proc/self/clear_refs). Counts every allocator, numpy's and gRPC's included."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    out = fn()
    return _status_bytes("VmHWM") - before, _status_bytes("VmRSS") - before, out


def make_pki(root: Path, names=MEMBERS + ("mallory",)) -> Path:
    identity.init_ca(root)
    identity.issue_server(root, ["127.0.0.1", "localhost"])
    for n in names:
        identity.issue_client(root, n)
    return root


def start_server(tmp: Path, pki: Path, dim: int, *, ring_bits: int = 32, **deadlines: float) -> ServerApp:
    d = {"join_s": 30.0, "training_s": 60.0, "poll_s": 0.5}
    d.update(deadlines)
    cfg = parse_model(ServerConfig, {
        "server": {"address": "127.0.0.1:0", "credentials_dir": str(pki), "state_dir": str(tmp / "server-state"),
                   "base_model_dir": str(tmp / "no-model")},
        "federation": {"rounds": 1, "cohort_size": 3, "min_clients": 3, "threshold": 2, "mode": "plaintext",
                       "allow_plaintext_for_debugging": True, "ring_bits": ring_bits,
                       "frac_bits": 16 if ring_bits == 32 else 32},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "deadlines": d,
        "model": {"fingerprint": "00" * 32},  # no checkpoint here: the round-0 adapter is stubbed below
    })
    app = ServerApp(cfg)
    co = app.coordinator
    vec = np.zeros(dim, np.float32)
    co._initial_adapter = lambda: (vec, '{"tensors":[],"version":1}', co.settings_json, None)
    app.start()
    return app


def member_config(pki: Path, tmp: Path, name: str, address: str, **connection: float) -> ClientConfig:
    conn = {"poll_wait_s": 0.5, "backoff_initial_s": 0.05, "backoff_max_s": 0.5, "rpc_timeout_s": 30.0}
    conn.update(connection)
    return parse_model(ClientConfig, {
        "client": {"name": name, "server": address, "credentials_dir": str(pki), "state_dir": str(tmp / name),
                   "base_model_dir": str(tmp / "no-model")},
        "data": {"demo_client": 0, "demo_clients": 3},
        "privacy": {"target_epsilon": 8.0, "delta": 1e-5},
        "connection": conn,
    })


def identity_key(pki: Path, name: str) -> bytes:
    key = identity.load_client_credentials(pki, name).identity_key
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class MemberRun:
    """What one hand-driven member did in the round."""

    name: str
    connection: Connection
    upload_bytes: int = 0
    download_bytes: int = 0
    final_digest: str = ""
    error: BaseException | None = None
    timings: dict[str, float] = field(default_factory=dict)


def run_member(run: MemberRun, pki: Path, payload_value: float, timeout_s: float = 60.0) -> None:
    """Register, take the plan, download the global adapter, accept, upload the update, download the new global."""
    c = run.connection
    try:
        c.open()
        c.register(identity_key(pki, run.name))
        end = time.monotonic() + timeout_s
        plan = None
        while plan is None and time.monotonic() < end:
            task = c.poll(0, 0.5)
            plan = task.plan if task.WhichOneof("body") == "plan" else None
        assert plan is not None, "no plan"
        attempt = int(plan.round)
        t0 = time.monotonic()
        got = c.download(attempt)
        run.timings["download_s"] = time.monotonic() - t0
        run.download_bytes += got.nbytes
        bundle = decode_bundle(got.parts[0], "global adapter")
        assert bytes.fromhex(bundle.digest) == bytes(plan.global_adapter_sha256)
        c.submit(c.header(attempt, pb.STAGE_PLAN, bytes(plan.plan_sha256)),
                 plan_decision=pb.PlanDecision(participate=True))
        ring_bits, data = encode_upload(np.full(int(plan.vector_length), payload_value), plan)
        t0 = time.monotonic()
        c.upload_masked(c.header(attempt, pb.STAGE_PLAINTEXT_UPLOAD), ring_bits, data)
        run.timings["upload_s"] = time.monotonic() - t0
        run.upload_bytes += len(data)
        while time.monotonic() < end:
            task = c.poll(attempt, 0.5)
            body = task.WhichOneof("body")
            if body == "aggregate_ready":
                new = c.download(attempt)
                run.download_bytes += new.nbytes
                run.final_digest = decode_bundle(new.parts[0], "new global adapter").digest
                assert bytes.fromhex(run.final_digest) == bytes(task.aggregate_ready.sha256)
                return
            assert body in ("wait", "plan", None), body
        raise AssertionError("no aggregate")
    except BaseException as exc:  # reported by the test
        run.error = exc
    finally:
        c.close()


def run_round(tmp: Path, pki: Path, dim: int, *, via: dict[str, str] | None = None, server: ServerApp | None = None,
              connection: dict | None = None) -> tuple[ServerApp, dict[str, MemberRun], bool]:
    """One plaintext round with three hand-driven members; ``via`` maps a member to the address it dials."""
    app = server or start_server(tmp, pki, dim)
    direct = f"127.0.0.1:{app.port}"
    runs = {n: MemberRun(n, Connection(member_config(pki, tmp, n, (via or {}).get(n, direct), **(connection or {}))))
            for n in MEMBERS}
    threads = [threading.Thread(target=run_member, args=(r, pki, 0.01 * (i + 1)), daemon=True)
               for i, r in enumerate(runs.values())]
    result: dict[str, bool] = {}
    loop = threading.Thread(target=lambda: result.setdefault("ok", app.run()), daemon=True)
    loop.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    loop.join(30)
    return app, runs, result.get("ok", False)
