"""The member's one connection to the server: the stub, its calls, its streams, written once.

Every request goes through here: unary calls, the streamed download of an aggregate, the streamed
uploads of a masked vector and of CKKS ciphertexts. gRPC failures become typed securefed errors
(``transport.service.error_from_rpc``) in one place, streams report progress, and request headers
carry sequence numbers that only ever increase (the server refuses replays by them).

Transfers resume (protocols/transfers.md): an upload is declared with ``OpenTransfer``, which also
says how much of it the server holds, and a dropped stream is followed by another from there; a
download asks again from the bytes it has. Only network failures are retried, with backoff, for up
to ``connection.transfer_give_up_s``; a refusal ends the transfer at once.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from securefed import __version__
from securefed.client.config import ClientConfig
from securefed.client.progress import Progress
from securefed.errors import InvalidMessage, TransportError
from securefed.logs import get_logger, log
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.chunking import (
    AggregateSlice,
    Buffer,
    PartsReceiver,
    content_digest,
    decode_aggregate_chunk,
    encode_transfer_chunk,
    slices,
    transfer_id,
    views,
)
from securefed.transport.limits import CHUNK_BYTES, TRANSFER_CHUNK_BYTES
from securefed.transport.messages import FederationStub
from securefed.transport.service import error_from_rpc, method_path
from securefed.transport.tls import make_channel

logger = get_logger("client")
T = TypeVar("T")

SUPPORTED_MODES = (pb.AGGREGATION_MODE_SECAGG, pb.AGGREGATION_MODE_CKKS, pb.AGGREGATION_MODE_PLAINTEXT)
_RING_BITS = {32: pb.RING_BITS_32, 64: pb.RING_BITS_64}

_SEQ_LOCK = threading.Lock()
_SEQ = [time.time_ns() // 1000]  # microseconds: increases across restarts of the daemon too


def next_sequence() -> int:
    with _SEQ_LOCK:
        _SEQ[0] = max(_SEQ[0] + 1, time.time_ns() // 1000)
        return _SEQ[0]


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Map a failed call to the typed securefed error the member reacts to."""
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None


@dataclass(frozen=True)
class Download:
    round: int  # the global-adapter version (or the attempt, for a driver's aggregate)
    kind: int  # pb.AggregateKind
    parts: list[bytearray | memoryview]  # transport.chunking.PartsReceiver's buffers, not copied
    nbytes: int


@dataclass
class TransferCounts:
    """Payload bytes this connection moved (repeats after a resume included), and how often it resumed."""

    sent: int = 0
    received: int = 0
    uploaded: int = 0  # payload bytes of completed uploads
    downloaded: int = 0
    resumes: int = 0


class Connection:
    """``Connection(config)``: dial lazily with ``open()``; every call maps errors the same way."""

    def __init__(self, config: ClientConfig, *, stop: threading.Event | None = None) -> None:
        self.config = config
        self.name = config.client.name
        self._timeout = config.connection.rpc_timeout_s
        self._stop = stop or threading.Event()
        self._channel: grpc.Channel | None = None
        self._stub: FederationStub | None = None
        self.counts = TransferCounts()

    def open(self) -> None:
        """(Re)dial the server; an existing channel is closed first."""
        self.close()
        c = self.config.client
        self._channel = ch = make_channel(c.server, c.credentials_dir, self.name, server_name=c.server_name)
        self._stub = FederationStub(ch)
        # The two bulk streams carry hand-encoded messages (transport.chunking): one copy of the data each way.
        self._send_transfer = ch.stream_unary(method_path("SendTransfer"), request_serializer=None,
                                              response_deserializer=pb.TransferState.FromString)
        self._download_raw = ch.unary_stream(method_path("DownloadAggregate"),
                                             request_serializer=pb.DownloadAggregateRequest.SerializeToString,
                                             response_deserializer=None)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def header(self, attempt: int = 0, stage: int = pb.STAGE_UNSPECIFIED, session: bytes = b"",
               sequenced: bool = True) -> pb.RequestHeader:
        return pb.RequestHeader(client_id=self.name, session_id=session, round=attempt, stage=stage,
                                sequence=next_sequence() if sequenced else 0)

    def call(self, method: str, request, *, timeout: float | None = None):
        """One unary RPC by name (``timeout``: a shorter deadline than the configured one)."""
        with rpc_errors():
            return getattr(self._stub, method)(request, timeout=timeout or self._timeout)

    # --- the calls the daemon makes -----------------------------------------------------------
    def register(self, identity_public_key: bytes) -> pb.RegisterResponse:
        return self.call("Register", pb.RegisterRequest(
            header=pb.RequestHeader(client_id=self.name, stage=pb.STAGE_REGISTER),
            identity_public_key=identity_public_key, software_version=__version__, supported_modes=SUPPORTED_MODES))

    def poll(self, attempt: int, wait_s: float) -> pb.Task:
        return self.call("PollTask", pb.PollTaskRequest(header=self.header(attempt, sequenced=False),
                                                        max_wait_ms=int(wait_s * 1000)))

    def submit(self, header: pb.RequestHeader, **result) -> pb.SubmitResultResponse:
        return self.call("SubmitResult", pb.SubmitResultRequest(header=header, **result))

    def upload_masked(self, header: pb.RequestHeader, ring_bits: int, data: Buffer) -> None:
        """A vector in Z_(2^ring_bits) (masked input, plaintext debug upload, decrypted CKKS sum)."""
        self.upload(header, pb.TRANSFER_KIND_RING_VECTOR, [data], ring_bits=ring_bits)

    def upload_ciphertext(self, header: pb.RequestHeader, parts: Sequence[Buffer]) -> None:
        """CKKS ciphertext parts (the last one is the contribution signature)."""
        self.upload(header, pb.TRANSFER_KIND_CIPHERTEXTS, parts)

    # --- resumable transfers --------------------------------------------------------------------
    def upload(self, header: pb.RequestHeader, kind: int, parts: Sequence[Buffer], *, ring_bits: int = 0) -> None:
        """Declare the upload, then send it from wherever the server says it stands, until it has it all."""
        out = _Outgoing(self.name, header, kind, parts, ring_bits, self.counts)
        with Progress("upload", out.total, "B", attempt=header.round) as out.progress:

            def step() -> None:
                start = out.resume_point(self.call("OpenTransfer", out.open_request()))
                if start is None:
                    return  # the server has it all
                with rpc_errors():
                    done = self._send_transfer(out.messages(start), timeout=self._timeout)
                if not done.complete:
                    raise TransportError("the upload stream ended before the server had every byte")

            self._resuming("upload", header.round, step)
        self.counts.uploaded += out.total

    def download(self, attempt: int) -> Download:
        """The aggregate the server serves this member for ``attempt`` (the global adapter by default)."""
        with _Incoming(attempt) as got:

            def step() -> PartsReceiver:
                req = pb.DownloadAggregateRequest(
                    header=pb.RequestHeader(client_id=self.name, round=attempt, stage=pb.STAGE_AGGREGATE),
                    resume_content_sha256=got.sha256, resume_offset=got.committed)
                first = True
                with rpc_errors():
                    for raw in self._download_raw(req, timeout=self._timeout):
                        m = decode_aggregate_chunk(raw)
                        self.counts.received += len(m.data)
                        got.take(m, first)
                        first = False
                if got.recv is None or not got.recv.complete:
                    raise InvalidMessage("the download ended before its last byte")
                return got.recv

            recv = self._resuming("download", attempt, step)
        self.counts.downloaded += recv.total
        return Download(got.round, got.kind, recv.parts(), recv.total)

    def _resuming(self, what: str, attempt: int, step: Callable[[], T]) -> T:
        """``step`` until it completes; a network failure is retried with backoff (and resumes)."""
        conn = self.config.connection
        give_up = time.monotonic() + conn.transfer_give_up_s
        delay = conn.backoff_initial_s
        while True:
            try:
                return step()
            except TransportError as exc:
                if time.monotonic() + delay > give_up or self._stop.is_set():
                    raise
                self.counts.resumes += 1
                log(logger, f"{what} interrupted, resuming", attempt=attempt, retry_in_s=round(delay, 2),
                    error=str(exc))
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, conn.backoff_max_s)


class _Outgoing:
    """One upload across its streams: declared once, sent from the offset the server acknowledges."""

    def __init__(self, name: str, header: pb.RequestHeader, kind: int, parts: Sequence[Buffer], ring_bits: int,
                 counts: TransferCounts) -> None:
        self.views = views(parts)
        sizes = [len(v) for v in self.views]
        self.total, digest = sum(sizes), content_digest(self.views)
        self.id = transfer_id(name, header.round, header.stage, kind, ring_bits, sizes, digest)
        self._request = pb.TransferOpenRequest(header=header, kind=kind, ring_bits=ring_bits, part_sizes=sizes,
                                               sha256=digest)
        self._asked = False
        self._counts = counts
        self._high = 0  # progress shows the furthest byte sent; a resume repeats what was in flight
        self._chunk = TRANSFER_CHUNK_BYTES
        self.progress: Progress | None = None

    def open_request(self) -> pb.TransferOpenRequest:
        if self._asked:
            self._request.header.sequence = next_sequence()  # asking again is a new request
        self._asked = True
        return self._request

    def resume_point(self, st: pb.TransferState) -> int | None:
        """Where to send from, or None once the server has it all."""
        if bytes(st.transfer_id) != self.id:
            raise InvalidMessage("the server named another upload than the one declared")
        if st.complete:
            return None
        if st.committed >= self.total:  # whole, but the server is still handing it to the round
            raise TransportError("the server is still taking the upload")
        self._chunk = min(st.chunk_bytes or TRANSFER_CHUNK_BYTES, CHUNK_BYTES)
        return int(st.committed)

    def messages(self, start: int) -> Iterator[bytes]:
        for off, pieces in slices(self.views, start, self._chunk):
            n = sum(len(p) for p in pieces)
            self._counts.sent += n
            if off + n > self._high and self.progress is not None:
                self.progress.update(off + n - self._high)
                self._high = off + n
            yield encode_transfer_chunk(self.id, off, pieces)


class _Incoming:
    """One download across its streams: it resumes while the server serves the same content."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.recv: PartsReceiver | None = None
        self.round = self.kind = 0
        self._bases: tuple[int, ...] = ()
        self._progress: Progress | None = None

    @property
    def sha256(self) -> bytes:
        return self.recv.sha256 if self.recv is not None else b""

    @property
    def committed(self) -> int:
        return self.recv.committed if self.recv is not None else 0

    def take(self, m: AggregateSlice, first: bool) -> None:
        if first:  # a stream's first message says what it serves
            if not m.content_sha256:
                raise InvalidMessage("a download stream must start with its content digest")
            if self.recv is None or m.content_sha256 != self.recv.sha256:  # new, or the content changed
                self.recv = PartsReceiver(m.part_sizes, m.content_sha256)
                self._bases = tuple(itertools.accumulate(self.recv.sizes[:-1], initial=0))
                self._close_progress()
                self._progress = Progress("download", self.recv.total, "B", attempt=self.attempt)
            self.round, self.kind = m.round, m.kind
        recv = self.recv
        assert recv is not None and self._progress is not None
        if m.count != len(recv.sizes) or m.index >= len(recv.sizes) or m.part_size != recv.sizes[m.index]:
            raise InvalidMessage("download chunk does not fit the parts its stream announced")
        self._progress.update(recv.write(self._bases[m.index] + m.offset, m.data))

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def __enter__(self) -> "_Incoming":
        return self

    def __exit__(self, *exc) -> None:
        self._close_progress()
