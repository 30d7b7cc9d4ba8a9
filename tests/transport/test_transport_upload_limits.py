"""A hostile member cannot make the server buffer more than the round expects from it (issue 10 §5).

Against the real coordinator over gRPC and mutual TLS: every upload is checked (round, stage, cohort,
sequence, exact size) before a byte is buffered; chunks go only to an upload the caller opened; a
member holds one incomplete upload at a time and runs at most two upload streams. Each attack has a
negative control: with the defence switched off, the same attack makes the server hold the bytes.
"""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import numpy as np
import pytest
from transfer_harness import MEMBERS, identity_key, make_pki, rss_rise, start_server

from securefed import he
from securefed.client.connection import next_sequence
from securefed.config import parse_model
from securefed.errors import InvalidMessage, StaleMessage
from securefed.he.vector import c0_bytes, seeds_bytes
from securefed.protocol.plaintext import encode_upload
from securefed.server.attempt import AttemptContext
from securefed.server.checkpoint import Checkpoint
from securefed.server.ckks_driver import CkksDriver
from securefed.server.config import ServerConfig
from securefed.server.plaintext_driver import PlaintextDriver
from securefed.transport import tls
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.chunking import encode_transfer_chunk, slices, views
from securefed.transport.limits import MIB, TRANSFER_CHUNK_BYTES
from securefed.transport.messages import FederationStub
from securefed.transport.service import method_path

pytestmark = pytest.mark.timeout(120)

DIM = 1 << 16
EXPECTED = (DIM + 1) * 4  # the one upload the plaintext round takes from a member: ring 2^32
HUGE = 64 * MIB


class Peer:
    """A member speaking raw gRPC (what a hostile member controls)."""

    def __init__(self, pki, name: str, address: str) -> None:
        self.name = name
        self.channel = tls.make_channel(address, pki, name)
        self.stub = FederationStub(self.channel)
        self.send = self.channel.stream_unary(method_path("SendTransfer"), request_serializer=None,
                                              response_deserializer=pb.TransferState.FromString)
        self.stub.Register(pb.RegisterRequest(header=pb.RequestHeader(client_id=name, stage=pb.STAGE_REGISTER),
                                              identity_public_key=identity_key(pki, name)), timeout=10)

    def header(self, attempt: int, stage: int = pb.STAGE_PLAINTEXT_UPLOAD) -> pb.RequestHeader:
        return pb.RequestHeader(client_id=self.name, round=attempt, stage=stage, sequence=next_sequence())

    def open(self, attempt: int, sizes, sha: bytes = bytes(32), *, stage: int = pb.STAGE_PLAINTEXT_UPLOAD,
             kind: int = pb.TRANSFER_KIND_RING_VECTOR) -> pb.TransferState:
        return self.stub.OpenTransfer(pb.TransferOpenRequest(
            header=self.header(attempt, stage), kind=kind, ring_bits=32, part_sizes=list(sizes), sha256=sha),
            timeout=10)

    def stream(self, tid: bytes, start: int, nbytes: int, fill: bytes = b"\x07"):
        block = fill * TRANSFER_CHUNK_BYTES
        msgs = (encode_transfer_chunk(tid, off, views([block[:min(TRANSFER_CHUNK_BYTES, start + nbytes - off)]]))
                for off in range(start, start + nbytes, TRANSFER_CHUNK_BYTES))
        return self.send(msgs, timeout=30)


def _refused(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        fn()
    return exc.value


@pytest.fixture()
def round_open(tmp_path):
    """A plaintext round in its plan stage: the cohort m1..m3 holds the plan; mallory registered later."""
    pki = make_pki(tmp_path / "pki")
    app = start_server(tmp_path, pki, DIM)
    address = f"127.0.0.1:{app.port}"
    loop = threading.Thread(target=app.run, daemon=True)
    loop.start()
    peers = {n: Peer(pki, n, address) for n in MEMBERS}
    attempt = 0
    for p in peers.values():
        end = time.monotonic() + 30
        while time.monotonic() < end:
            task = p.stub.PollTask(pb.PollTaskRequest(header=pb.RequestHeader(client_id=p.name), max_wait_ms=500),
                                   timeout=10)
            if task.WhichOneof("body") == "plan":
                attempt = int(task.plan.round)
                break
    assert attempt
    peers["mallory"] = Peer(pki, "mallory", address)
    yield app, peers, attempt
    for p in peers.values():
        p.channel.close()
    app.coordinator.stop()
    loop.join(10)
    app.stop(grace=0.2)


def test_uploads_outside_the_round_are_refused_before_a_byte_is_buffered(round_open):
    app, peers, attempt = round_open
    table = app.coordinator.mailbox.uploads
    m1, mallory = peers["m1"], peers["mallory"]
    refusals = {
        "not in the cohort": lambda: mallory.open(attempt, [EXPECTED]),
        "another round": lambda: m1.open(attempt + 1, [EXPECTED]),
        "another stage": lambda: m1.open(attempt, [EXPECTED], stage=pb.STAGE_MASKED_INPUT),
        "more bytes than the round expects": lambda: m1.open(attempt, [HUGE]),
        "65,536 ciphertext parts": lambda: m1.open(attempt, [HUGE // 65536] * 65536,
                                                   kind=pb.TRANSFER_KIND_CIPHERTEXTS),
        "a replayed sequence number": lambda: m1.stub.OpenTransfer(pb.TransferOpenRequest(
            header=pb.RequestHeader(client_id="m1", round=attempt, stage=pb.STAGE_PLAINTEXT_UPLOAD, sequence=1),
            kind=pb.TRANSFER_KIND_RING_VECTOR, ring_bits=32, part_sizes=[EXPECTED], sha256=bytes(32)), timeout=10),
    }
    for what, attack in refusals.items():
        err = _refused(attack)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (what, err.details())
    # Chunks for an upload nobody opened, or that another member opened, go nowhere.
    theirs = peers["m2"].open(attempt, [EXPECTED])
    for tid in (b"\x00" * 32, bytes(theirs.transfer_id)):
        err = _refused(lambda: m1.stream(tid, 0, 2 * TRANSFER_CHUNK_BYTES))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "no such upload" in err.details()
    # The superseded RPCs: refused before the server reads the stream (the member offered 64 MiB).
    offered = []

    def legacy():
        for i in range(HUGE // MIB):
            offered.append(i)
            yield pb.CiphertextChunk(header=pb.RequestHeader(client_id="mallory", round=attempt), index=0,
                                     count=65536, chunk=pb.Chunk(offset=i * MIB, total_size=1 << 32, data=bytes(MIB)))

    err = _refused(lambda: mallory.stub.UploadCiphertext(legacy(), timeout=30))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "superseded" in err.details()
    assert len(offered) < HUGE // MIB
    assert table.buffered_bytes() == 0


def test_negative_control_without_the_size_check_a_member_makes_the_server_buffer_64_mib(round_open, monkeypatch):
    app, peers, attempt = round_open
    monkeypatch.setattr(PlaintextDriver, "check_upload", lambda *a, **kw: None)  # the defence, off
    m1 = peers["m1"]
    st = m1.open(attempt, [HUGE])
    _, held, state = rss_rise(lambda: m1.stream(bytes(st.transfer_id), 0, HUGE - 1))  # never completes
    assert state.committed == HUGE - 1 and not state.complete
    assert app.coordinator.mailbox.uploads.buffered_bytes("m1") == HUGE - 1
    assert held > 0.9 * HUGE  # real memory, still held by the server for the member


def _half_uploads(m1: Peer, attempt: int, k: int) -> list[pb.TransferState]:
    """k different uploads of the expected size, each sent half-way."""
    out = []
    for i in range(k):
        st = m1.open(attempt, [EXPECTED], hashlib.sha256(b"upload %d" % i).digest())
        try:
            out.append(m1.stream(bytes(st.transfer_id), 0, EXPECTED // 2))
        except grpc.RpcError as exc:  # pragma: no cover - reported by the assertions below
            out.append(exc)
    return out


def test_a_member_holds_one_incomplete_upload_so_its_bytes_in_flight_never_exceed_the_expected_size(round_open):
    app, peers, attempt = round_open
    table = app.coordinator.mailbox.uploads
    m1 = peers["m1"]
    states = _half_uploads(m1, attempt, 5)
    assert all(s.committed == EXPECTED // 2 for s in states)
    assert table.buffered_bytes("m1") == EXPECTED // 2  # each open discarded the one before
    # The discarded uploads take no more data; the live one takes none past its declared end.
    first = m1.open(attempt, [EXPECTED], hashlib.sha256(b"upload 0").digest())  # reopened: from zero
    assert first.committed == 0
    err = _refused(lambda: m1.stream(bytes(first.transfer_id), 0, EXPECTED + TRANSFER_CHUNK_BYTES))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "past the declared size" in err.details()
    assert table.buffered_bytes("m1") <= EXPECTED


def test_negative_control_without_the_per_member_cap_the_same_member_holds_five_times_as_much(round_open):
    app, peers, attempt = round_open
    app.coordinator.mailbox.uploads.per_member = None  # the defence, off
    _half_uploads(peers["m1"], attempt, 5)
    assert app.coordinator.mailbox.uploads.buffered_bytes("m1") == 5 * (EXPECTED // 2)


def test_a_member_runs_at_most_two_upload_streams_and_the_newest_is_the_only_writer(round_open):
    app, peers, attempt = round_open
    m1 = peers["m1"]
    st = m1.open(attempt, [EXPECTED])
    tid = bytes(st.transfer_id)
    release = threading.Event()
    results: list = []

    def slow_stream(start: int) -> None:
        def msgs():
            yield encode_transfer_chunk(tid, start, views([b"\x07" * 1000]))
            release.wait(20)
            yield encode_transfer_chunk(tid, start + 1000, views([b"\x07" * 1000]))
        try:
            results.append(m1.send(msgs(), timeout=30))
        except grpc.RpcError as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow_stream, args=(0,)), threading.Thread(target=slow_stream, args=(1000,))]
    threads[0].start()
    time.sleep(0.5)
    threads[1].start()  # takes over the upload from the first stream
    time.sleep(0.5)
    err = _refused(lambda: m1.stream(tid, 2000, 1000))
    assert err.code() is grpc.StatusCode.UNAVAILABLE and "too many upload streams" in err.details()
    release.set()
    for t in threads:
        t.join(20)
    codes = sorted(r.code().name if isinstance(r, grpc.RpcError) else "ok" for r in results)
    assert codes == ["INVALID_ARGUMENT", "ok"]  # the older stream was refused: "a newer stream took over"
    assert next(r for r in results if not isinstance(r, grpc.RpcError)).committed == 3000


def test_after_the_attacks_honest_members_complete_the_round(round_open):
    app, peers, attempt = round_open
    _half_uploads(peers["m1"], attempt, 3)
    plan = app.coordinator.mailbox.ctx.plan
    for name in MEMBERS:
        p = peers[name]
        p.stub.SubmitResult(pb.SubmitResultRequest(header=pb.RequestHeader(
            client_id=name, round=attempt, stage=pb.STAGE_PLAN, session_id=plan.plan_sha256, sequence=next_sequence()),
            plan_decision=pb.PlanDecision(participate=True)), timeout=10)
        _, data = encode_upload(np.full(DIM + 1, 0.01), plan)
        st = p.open(attempt, [len(data)], hashlib.sha256(data).digest())
        done = p.send((encode_transfer_chunk(bytes(st.transfer_id), off, pieces)
                       for off, pieces in slices(views([data]), st.committed, TRANSFER_CHUNK_BYTES)), timeout=30)
        assert done.complete
    end = time.monotonic() + 30
    while app.coordinator.roundlog.last_completed() is None and time.monotonic() < end:
        time.sleep(0.1)
    assert app.coordinator.roundlog.last_completed() is not None
    assert app.coordinator.mailbox.uploads.buffered_bytes() == 0  # freed when the attempt ended


def test_a_ckks_upload_must_declare_exactly_the_parts_the_round_expects(tmp_path):
    """The driver-side check the issue's attack hit (``UploadCiphertext`` buffered 65,536 x 4 GiB)."""
    client = he.generate_client_context(he.DEFAULT_PARAMS_NAME)
    server_ctx = he.ServerContext.from_public_bytes(client.public_bytes(), he.DEFAULT_PARAMS_NAME)
    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path), "state_dir": str(tmp_path), "base_model_dir": str(tmp_path),
                   "ckks_public_context": str(tmp_path / "public.ctx")},
        "federation": {"mode": "ckks"}})
    length = 3 * 4096 + 5
    ckpt = Checkpoint(0, np.zeros(3, np.float32), "{}", "", None, "00" * 32, tmp_path / "g.bin")
    ctx = AttemptContext(attempt=1, round=1, config=cfg, cohort=("a", "b", "c"), identity_keys={},
                         global_ckpt=ckpt, payload_length=length, plan=pb.RoundPlan(round=1))
    d = CkksDriver(ctx, server_ctx)
    phase = d.first_phase()
    p = server_ctx.params
    ok = (c0_bytes(p, length), seeds_bytes(p, length), 100, 64)  # c0, seeds, sealed tag, signature
    kind, stage = pb.TRANSFER_KIND_CIPHERTEXTS, pb.STAGE_CIPHERTEXT_UPLOAD
    d.check_upload(phase, "a", kind, stage, 0, ok)
    for bad in (ok[:-1], ok[:-1] + (65,), (ok[0] + 1,) + ok[1:], ok[:1] + (ok[1] - 65,) + ok[2:],
                ok[:2] + (0,) + ok[3:], ok[:2] + (257,) + ok[3:], (HUGE // 65536,) * 65536):
        with pytest.raises(InvalidMessage, match="a CKKS upload is"):
            d.check_upload(phase, "a", kind, stage, 0, bad)
    with pytest.raises(StaleMessage):
        d.check_upload(phase, "a", pb.TRANSFER_KIND_RING_VECTOR, pb.STAGE_AGGREGATE, 32, (4 * length,))
