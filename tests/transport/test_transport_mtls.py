"""Real gRPC over real TLS on 127.0.0.1: who gets in, who is refused, and the server keeps serving."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import socket
import ssl
import struct
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from securefed import errors
from securefed.transport import identity, service, tls
from securefed.transport.limits import CHUNK_BYTES, MAX_MESSAGE_BYTES, MIB, PROTOCOL_VERSION
from securefed.transport.messages import FederationServicer, FederationStub, pb, secagg_pb

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0


def split_payload(payload: bytes, size: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """Legacy per-message chunks (offset, total size, data); the transport moves them like any message."""
    for off in range(0, max(len(payload), 1), size):
        yield pb.Chunk(offset=off, total_size=len(payload), data=payload[off:off + size])


def join_chunks(chunks: Iterator[pb.Chunk]) -> bytes:
    out = bytearray()
    for c in chunks:
        if c.offset != len(out):
            raise errors.InvalidMessage(f"chunk at offset {c.offset}, expected {len(out)} (out of order or missing)")
        out += c.data
    return bytes(out)


class RecordingServicer(FederationServicer):
    """GetStatus/Register/UploadMasked/DownloadAggregate from the real proto; counts calls."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.aggregate = bytes(range(256)) * 4096 * 5  # 5 MiB: needs two chunks

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        self.calls["GetStatus"] += 1
        if request.header.round == 666:
            raise errors.ProtocolAbort("round 666 was aborted")
        if request.header.round == 667:
            raise errors.NotRegistered("register before polling")
        return pb.StatusResponse(
            protocol_version=PROTOCOL_VERSION,
            client_id=service.peer_identity(context),
            current_round=request.header.round,
        )

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterResponse:
        self.calls["Register"] += 1
        peer = service.authenticate_peer(context)
        if request.identity_public_key != identity.raw_public_key(peer.identity_public_key):
            raise errors.CryptoError("identity key check failed")
        return pb.RegisterResponse(
            client_id=peer.client_id, max_message_bytes=MAX_MESSAGE_BYTES, chunk_bytes=CHUNK_BYTES
        )

    def UploadMasked(self, request_iterator: Iterator[pb.MaskedInputChunk], context: grpc.ServicerContext) -> pb.UploadReceipt:
        payload = join_chunks(msg.chunk for msg in request_iterator)
        self.calls["UploadMasked"] += 1  # completed uploads only
        return pb.UploadReceipt(bytes_received=len(payload), sha256=hashlib.sha256(payload).digest())

    def DownloadAggregate(self, request: pb.DownloadAggregateRequest, context: grpc.ServicerContext) -> Iterator[pb.AggregateChunk]:
        self.calls["DownloadAggregate"] += 1
        for chunk in split_payload(self.aggregate):
            yield pb.AggregateChunk(round=request.header.round, kind=pb.AGGREGATE_KIND_GLOBAL_ADAPTER, count=1, chunk=chunk)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("federation")
    identity.init_ca(d)
    identity.issue_server(d, ["127.0.0.1", "localhost"])
    for name in ("alice", "bob"):
        identity.issue_client(d, name)
    now = dt.datetime.now(dt.timezone.utc)
    identity.issue_client(d, "expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    return d


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA that issues a perfectly formed certificate for 'alice'."""
    d = tmp_path_factory.mktemp("rogue")
    identity.init_ca(d)
    identity.issue_client(d, "alice")
    return d


@pytest.fixture(scope="module")
def server(creds: Path) -> Iterator[tuple[RecordingServicer, int]]:
    servicer = RecordingServicer()
    bound = tls.make_server("127.0.0.1:0", creds, max_workers=4)
    service.add_federation_servicer(bound.server, servicer)
    bound.server.start()
    yield servicer, bound.port
    bound.server.stop(None)


def _target(port: int) -> str:
    return f"127.0.0.1:{port}"


def _header(client_id: str, **kw: object) -> pb.RequestHeader:
    return pb.RequestHeader(client_id=client_id, **kw)  # type: ignore[arg-type]


def _status(channel: grpc.Channel, client_id: str, round_: int = 0) -> pb.StatusResponse:
    return FederationStub(channel).GetStatus(pb.GetStatusRequest(header=_header(client_id, round=round_)), timeout=TIMEOUT)


def _assert_alive(creds: Path, port: int) -> None:
    """The server still serves an honest client after whatever the test did."""
    with tls.make_channel(_target(port), creds, "bob") as ch:
        assert _status(ch, "bob").client_id == "bob"


def test_valid_mtls_client_identity_comes_from_certificate(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    _, port = server
    with tls.make_channel(_target(port), creds, "alice") as ch:
        reply = _status(ch, "alice", round_=7)
    assert reply.client_id == "alice"
    assert reply.current_round == 7
    assert reply.protocol_version == "securefed.v1"


def test_register_checks_identity_key_bound_in_certificate(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    _, port = server
    alice = identity.load_client_credentials(creds, "alice")
    bob = identity.load_client_credentials(creds, "bob")
    with tls.make_channel(_target(port), creds, "alice") as ch:
        stub = FederationStub(ch)
        ok = stub.Register(
            pb.RegisterRequest(header=_header("alice"), identity_public_key=identity.raw_public_key(alice.identity_public_key)),
            timeout=TIMEOUT,
        )
        assert ok.client_id == "alice" and ok.max_message_bytes == 8 * MIB and ok.chunk_bytes == 4 * MIB
        with pytest.raises(grpc.RpcError) as info:
            stub.Register(
                pb.RegisterRequest(header=_header("alice"), identity_public_key=identity.raw_public_key(bob.identity_public_key)),
                timeout=TIMEOUT,
            )
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert isinstance(service.error_from_rpc(info.value), errors.CryptoError)


def _rpc_error(fn) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_client_certificate_from_unknown_ca_is_rejected(creds: Path, rogue: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    fake = identity.load_client_credentials(rogue, "alice")
    real_ca = identity.load_ca_pem(creds)  # the client trusts the real server; only its own cert is rogue
    creds_ = grpc.ssl_channel_credentials(real_ca, fake.private_key_pem, fake.certificate_pem)
    with grpc.secure_channel(_target(port), creds_) as ch:
        err = _rpc_error(lambda: _status(ch, "alice"))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetStatus"] == before
    _assert_alive(creds, port)


def test_missing_client_certificate_is_rejected(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    with grpc.secure_channel(_target(port), grpc.ssl_channel_credentials(identity.load_ca_pem(creds))) as ch:
        err = _rpc_error(lambda: _status(ch, "alice"))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetStatus"] == before


def test_expired_client_certificate_is_rejected(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    with tls.make_channel(_target(port), creds, "expired") as ch:
        err = _rpc_error(lambda: _status(ch, "expired"))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetStatus"] == before
    _assert_alive(creds, port)


def test_plaintext_channel_is_rejected(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    with grpc.insecure_channel(_target(port)) as ch:
        err = _rpc_error(lambda: _status(ch, "alice"))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetStatus"] == before
    _assert_alive(creds, port)


def test_server_certificate_cannot_act_as_a_client(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    """Same CA, but a server certificate: either TLS (EKU) or our identity check must refuse it."""
    servicer, port = server
    before = servicer.calls["GetStatus"]
    srv = identity.load_server_credentials(creds)
    creds_ = grpc.ssl_channel_credentials(srv.ca_pem, srv.private_key_pem, srv.certificate_pem)
    with grpc.secure_channel(_target(port), creds_) as ch:
        err = _rpc_error(lambda: _status(ch, "securefed-server"))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert servicer.calls["GetStatus"] == before


def test_client_refuses_server_with_certificate_from_another_ca(creds: Path, rogue: Path) -> None:
    """The channel pins the federation CA: an impostor server (rogue CA) is refused by the client."""
    identity.issue_server(rogue, ["127.0.0.1"], force=True)
    bound = tls.make_server("127.0.0.1:0", rogue, max_workers=1)
    service.add_federation_servicer(bound.server, RecordingServicer())
    bound.server.start()
    try:
        with tls.make_channel(_target(bound.port), creds, "alice") as ch:
            err = _rpc_error(lambda: _status(ch, "alice"))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        bound.server.stop(None)


def test_spoofed_client_id_is_permission_denied_and_server_keeps_serving(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    uploads_before = servicer.calls["UploadMasked"]
    with tls.make_channel(_target(port), creds, "alice") as ch:
        stub = FederationStub(ch)
        err = _rpc_error(lambda: _status(ch, "bob"))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "bob" not in (err.details() or "")  # the refusal does not echo the claim
        # A claim buried in a stage message is checked too, before the servicer runs.
        spoofed = pb.SubmitResultRequest(
            header=_header("alice"),
            advertise_keys=secagg_pb.AdvertiseKeys(client_id="bob", c_pk=b"\x01" * 32, s_pk=b"\x02" * 32),
        )
        assert _rpc_error(lambda: stub.SubmitResult(spoofed, timeout=TIMEOUT)).code() is grpc.StatusCode.PERMISSION_DENIED
        shares = pb.SubmitResultRequest(
            header=_header("alice"),
            share_keys=secagg_pb.ShareKeys(
                client_id="alice",
                shares=[secagg_pb.EncryptedShare(from_client_id="bob", to_client_id="carol", ciphertext=b"x")],
            ),
        )
        assert _rpc_error(lambda: stub.SubmitResult(shares, timeout=TIMEOUT)).code() is grpc.StatusCode.PERMISSION_DENIED
        unmask = pb.SubmitResultRequest(
            header=_header("alice"),
            # Shares *of* bob's secrets are fine to send; claiming to *be* bob is not.
            unmask_response=secagg_pb.UnmaskResponse(
                client_id="bob", self_mask_shares=[secagg_pb.KeyShare(owner_client_id="bob", share=b"s")]
            ),
        )
        assert _rpc_error(lambda: stub.SubmitResult(unmask, timeout=TIMEOUT)).code() is grpc.StatusCode.PERMISSION_DENIED
        masked = pb.MaskedInputChunk(header=_header("bob"), chunk=next(split_payload(b"abcd")))
        assert _rpc_error(lambda: stub.UploadMasked(iter([masked]), timeout=TIMEOUT)).code() is grpc.StatusCode.PERMISSION_DENIED
        # The honest version of the same message passes the check (and reaches the unimplemented stage).
        honest = pb.SubmitResultRequest(
            header=_header("alice"),
            share_keys=secagg_pb.ShareKeys(
                client_id="alice",
                shares=[secagg_pb.EncryptedShare(from_client_id="alice", to_client_id="bob", ciphertext=b"x")],
            ),
        )
        assert _rpc_error(lambda: stub.SubmitResult(honest, timeout=TIMEOUT)).code() is grpc.StatusCode.UNIMPLEMENTED
        honest_unmask = pb.SubmitResultRequest(
            header=_header("alice"),
            unmask_response=secagg_pb.UnmaskResponse(
                client_id="alice", self_mask_shares=[secagg_pb.KeyShare(owner_client_id="bob", share=b"s")]
            ),
        )
        assert _rpc_error(lambda: stub.SubmitResult(honest_unmask, timeout=TIMEOUT)).code() is grpc.StatusCode.UNIMPLEMENTED
        # No header at all is refused as malformed.
        assert _rpc_error(lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=TIMEOUT)).code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _status(ch, "alice").client_id == "alice"
    assert servicer.calls["GetStatus"] == before + 1  # only the honest call reached the servicer
    assert servicer.calls["UploadMasked"] == uploads_before
    _assert_alive(creds, port)


def test_oversized_message_is_resource_exhausted(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    big = pb.GetStatusRequest(header=_header("alice", session_id=b"\0" * (MAX_MESSAGE_BYTES + 1024)))
    # A client built with make_channel will not even send it ...
    with tls.make_channel(_target(port), creds, "alice") as ch:
        err = _rpc_error(lambda: FederationStub(ch).GetStatus(big, timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # ... and the server refuses it from a client that raised its own limit.
    with tls.make_channel(_target(port), creds, "alice", max_message_bytes=64 * MIB) as ch:
        err = _rpc_error(lambda: FederationStub(ch).GetStatus(big, timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert servicer.calls["GetStatus"] == before
    _assert_alive(creds, port)


def test_large_payloads_stream_as_chunks_both_ways(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    payload = hashlib.sha256(b"seed").digest() * (9 * MIB // 32)  # 9 MiB > one message; not secret
    with tls.make_channel(_target(port), creds, "alice") as ch:
        stub = FederationStub(ch)
        chunks = (
            pb.MaskedInputChunk(
                header=_header("alice", stage=pb.STAGE_MASKED_INPUT, sequence=i + 1),
                ring_bits=pb.RING_BITS_32, num_elements=len(payload) // 4, chunk=c,
            )
            for i, c in enumerate(split_payload(payload))
        )
        receipt = stub.UploadMasked(chunks, timeout=TIMEOUT)
        assert receipt.bytes_received == len(payload)
        assert receipt.sha256 == hashlib.sha256(payload).digest()

        parts = list(stub.DownloadAggregate(pb.DownloadAggregateRequest(header=_header("alice", round=3)), timeout=TIMEOUT))
        assert all(part.round == 3 for part in parts)
        assert len(parts) == 2 and join_chunks(p.chunk for p in parts) == servicer.aggregate

        # A spoofed chunk mid-stream is refused even though the first chunk was honest.
        def mixed() -> Iterator[pb.MaskedInputChunk]:
            it = split_payload(payload)
            yield pb.MaskedInputChunk(header=_header("alice"), chunk=next(it))
            yield pb.MaskedInputChunk(header=_header("bob"), chunk=next(it))

        assert _rpc_error(lambda: stub.UploadMasked(mixed(), timeout=TIMEOUT)).code() is grpc.StatusCode.PERMISSION_DENIED

        # A reassembly error raised by the servicer (InvalidMessage) maps to INVALID_ARGUMENT.
        def gap() -> Iterator[pb.MaskedInputChunk]:
            chunks_ = list(split_payload(payload))
            yield pb.MaskedInputChunk(header=_header("alice"), chunk=chunks_[0])
            yield pb.MaskedInputChunk(header=_header("alice"), chunk=chunks_[2])

        err = _rpc_error(lambda: stub.UploadMasked(gap(), timeout=TIMEOUT))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "out of order" in (err.details() or "")


def test_malformed_protobuf_is_invalid_argument_and_server_keeps_serving(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    before = servicer.calls["GetStatus"]
    with tls.make_channel(_target(port), creds, "alice") as ch:
        raw_status = ch.unary_unary(service.method_path("GetStatus"), request_serializer=None, response_deserializer=None)
        for junk in (b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x12" + b"\xff" * 11):
            err = _rpc_error(lambda: raw_status(junk, timeout=TIMEOUT))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert err.details() == "malformed GetStatusRequest"
        raw_upload = ch.stream_unary(service.method_path("UploadMasked"), request_serializer=None, response_deserializer=None)
        err = _rpc_error(lambda: raw_upload(iter([b"\x0a\x80"]), timeout=TIMEOUT))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _status(ch, "alice").client_id == "alice"
    assert servicer.calls["GetStatus"] == before + 1
    _assert_alive(creds, port)


def test_servicer_errors_map_to_status_codes(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    _, port = server
    with tls.make_channel(_target(port), creds, "alice") as ch:
        err = _rpc_error(lambda: _status(ch, "alice", round_=666))
    assert err.code() is grpc.StatusCode.ABORTED
    assert err.details() == "round 666 was aborted"
    typed = service.error_from_rpc(err)
    assert isinstance(typed, errors.ProtocolAbort) and "round 666 was aborted" in str(typed)
    # A condition the member reacts to travels as its own status code and comes back as its own type
    # (the member re-registers on NotRegistered; it never matches the message text).
    with tls.make_channel(_target(port), creds, "alice") as ch:
        err = _rpc_error(lambda: _status(ch, "alice", round_=667))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert type(service.error_from_rpc(err)) is errors.NotRegistered


# ---- TLS version -------------------------------------------------------------------------------


def _ssl_context(creds: Path, name: str, *, maximum: ssl.TLSVersion, minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    d = identity.CredentialsDir(creds)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(d.ca_cert))
    ctx.load_cert_chain(str(d.client_cert(name)), str(d.client_key(name)))
    ctx.set_alpn_protocols(["h2"])
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    return ctx


def _connect(ctx: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _raw_grpc_call(sock: ssl.SSLSocket, path: str, message: bytes) -> set[int]:
    """Speak just enough HTTP/2 for one unary gRPC call; return the frame types the server sent on stream 1.

    A served call answers with a DATA frame (type 0); a refused one answers with headers only.
    """
    def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload

    def literal(name: str, value: str) -> bytes:  # HPACK literal without indexing, new name, no Huffman
        n, v = name.encode(), value.encode()
        return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v

    headers = b"".join(
        literal(k, v)
        for k, v in (
            (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        )
    )
    body = b"\x00" + struct.pack(">I", len(message)) + message
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 0x4, 1, headers) + frame(0, 0x1, 1, body)
    )
    seen: set[int] = set()
    buf = b""
    while True:
        while len(buf) < 9:
            more = sock.recv(65536)
            if not more:
                return seen
            buf += more
        length = int.from_bytes(buf[:3], "big")
        while len(buf) < 9 + length:
            more = sock.recv(65536)
            if not more:
                return seen
            buf += more
        ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = buf[9 + length :]
        if ftype == 4 and not flags & 0x1:
            sock.sendall(frame(4, 0x1, 0, b""))  # ACK the server's SETTINGS
        if stream == 1:
            seen.add(ftype)
            if flags & 0x1 or ftype == 3:  # END_STREAM or RST_STREAM
                return seen


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls13_is_negotiated_and_rpcs_over_tls12_are_refused(creds: Path, server: tuple[RecordingServicer, int]) -> None:
    servicer, port = server
    request = pb.GetStatusRequest(header=_header("alice")).SerializeToString()
    path = service.method_path("GetStatus")

    # A client that offers 1.3 gets 1.3, and a well-formed raw call is served (DATA frame back).
    with _connect(_ssl_context(creds, "alice", maximum=ssl.TLSVersion.TLSv1_3), port) as s13:
        assert s13.version() == "TLSv1.3"
        assert s13.selected_alpn_protocol() == "h2"
        before = servicer.calls["GetStatus"]
        assert 0 in _raw_grpc_call(s13, path, request)
        assert servicer.calls["GetStatus"] == before + 1

    # gRPC Python cannot pin the handshake's minimum version: a 1.2-only client completes the
    # handshake, but only with a forward-secret AEAD suite, and no RPC over it is served.
    with _connect(_ssl_context(creds, "alice", maximum=ssl.TLSVersion.TLSv1_2), port) as s12:
        assert s12.version() == "TLSv1.2"
        cipher = s12.cipher()[0]
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
        before = servicer.calls["GetStatus"]
        frames = _raw_grpc_call(s12, path, request)
        assert 0 not in frames and 1 in frames  # trailers only: refused
        assert servicer.calls["GetStatus"] == before

    # TLS 1.1 and below are refused in the handshake.
    old = _ssl_context(creds, "alice", minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _connect(old, port).close()
    _assert_alive(creds, port)
