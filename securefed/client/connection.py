"""The member's one connection to the server: the stub, its calls, its streams, written once.

Every request goes through here: unary calls, the streamed download of an aggregate, the streamed
uploads of a masked vector and of CKKS ciphertexts. gRPC failures become typed securefed errors
(``transport.service.error_from_rpc``) in one place, streams report progress, and request headers
carry sequence numbers that only ever increase (the server refuses replays by them).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc

from securefed import __version__
from securefed.client.config import ClientConfig
from securefed.client.progress import Progress
from securefed.errors import InvalidMessage
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.chunking import ChunkAssembler, split_payload
from securefed.transport.messages import FederationStub
from securefed.transport.service import error_from_rpc
from securefed.transport.tls import make_channel

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
    parts: list[bytes]
    nbytes: int


class Connection:
    """``Connection(config)``: dial lazily with ``open()``; every call maps errors the same way."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.name = config.client.name
        self._timeout = config.connection.rpc_timeout_s
        self._channel: grpc.Channel | None = None
        self._stub: FederationStub | None = None

    def open(self) -> None:
        """(Re)dial the server; an existing channel is closed first."""
        self.close()
        c = self.config.client
        self._channel = make_channel(c.server, c.credentials_dir, self.name, server_name=c.server_name)
        self._stub = FederationStub(self._channel)

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

    def download(self, attempt: int) -> Download:
        """The aggregate the server serves this member for ``attempt`` (the global adapter by default)."""
        req = pb.DownloadAggregateRequest(header=pb.RequestHeader(client_id=self.name, round=attempt,
                                                                  stage=pb.STAGE_AGGREGATE))
        parts: list[bytes] = []
        kind = rnd = nbytes = 0
        asm: ChunkAssembler | None = None
        with rpc_errors(), contextlib.ExitStack() as stack:
            prog: Progress | None = None
            for msg in self._stub.DownloadAggregate(req, timeout=self._timeout):
                if prog is None:
                    total = int(msg.chunk.total_size) * max(1, msg.count)
                    prog = stack.enter_context(Progress("download", total, "B", attempt=attempt))
                kind, rnd = msg.kind, msg.round
                asm = asm or ChunkAssembler()
                nbytes += len(msg.chunk.data)
                prog.update(len(msg.chunk.data))
                if asm.add(msg.chunk):
                    parts.append(asm.payload())
                    asm = None
        if asm is not None or not parts:
            raise InvalidMessage("incomplete download")
        return Download(rnd, kind, parts, nbytes)

    def upload_masked(self, header: pb.RequestHeader, ring_bits: int, data: bytes) -> None:
        """A vector in Z_(2^ring_bits) (masked input, plaintext debug upload, decrypted CKKS sum)."""
        n_el = len(data) * 8 // ring_bits
        rb = _RING_BITS[ring_bits]
        self._stream_upload("UploadMasked", header.round, len(data), (
            (len(ch.data), pb.MaskedInputChunk(header=header, ring_bits=rb, num_elements=n_el, chunk=ch))
            for ch in split_payload(data)))

    def upload_ciphertext(self, header: pb.RequestHeader, parts: list[bytes]) -> None:
        """CKKS ciphertext parts (the last one is the contribution signature)."""
        self._stream_upload("UploadCiphertext", header.round, sum(len(p) for p in parts), (
            (len(ch.data), pb.CiphertextChunk(header=header, index=i, count=len(parts), chunk=ch))
            for i, part in enumerate(parts) for ch in split_payload(part)))

    def _stream_upload(self, method: str, attempt: int, total: int, messages: Iterable[tuple[int, object]]) -> None:
        with Progress("upload", total, "B", attempt=attempt) as prog:

            def gen():
                for n, msg in messages:
                    prog.update(n)
                    yield msg

            with rpc_errors():
                getattr(self._stub, method)(gen(), timeout=self._timeout)
