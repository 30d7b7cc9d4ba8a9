"""gRPC server and channel with mutual TLS, a pinned federation CA and explicit size limits.

TLS version. gRPC Python (1.85) exposes no way to pin the minimum TLS version:
``grpc.ssl_server_credentials`` / ``ssl_channel_credentials`` take no version argument (requested
in grpc/grpc#37305; Python plumbing proposed in grpc/grpc#43045 and #43080, not released). gRPC core
fixes the range to TLS 1.2 .. 1.3 and, for 1.2, offers only ECDHE key exchange with AES-GCM or
ChaCha20-Poly1305 (forward secret AEAD suites). Between two gRPC peers BoringSSL negotiates
TLS 1.3. tests/transport/test_transport_mtls.py checks what is actually negotiated: a client that
offers TLS 1.3 gets TLS 1.3, a TLS 1.2-only client gets only an ECDHE-AEAD suite, and TLS 1.1 and
below are refused. When the Python API gains the option, set the minimum to 1.3 here.

Client certificates are REQUIRED (``require_client_auth=True``) and verified against the
federation CA only; the channel trusts only that CA too (no system roots), so a certificate from
any public CA is worthless here.
"""

from __future__ import annotations

import os
from concurrent import futures
from typing import NamedTuple, Sequence

import grpc

from securefed.errors import ConfigError, TransportError
from securefed.transport import identity
from securefed.transport.limits import MAX_MESSAGE_BYTES

ChannelOptions = Sequence[tuple[str, int | str]]

# Keepalive: long polls sit idle for up to MAX_POLL_WAIT_MS behind NATs and firewalls that drop
# silent flows; the server must permit pings at least as often as clients send them.
_CLIENT_KEEPALIVE_MS = 60_000
_SERVER_MIN_PING_INTERVAL_MS = 30_000


def _size_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int | str]]:
    return [
        *_size_options(max_message_bytes),
        # Never share a port with another process (SO_REUSEPORT would let a second server on the
        # same port silently take half the connections).
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int | str]]:
    return [
        *_size_options(max_message_bytes),
        ("grpc.keepalive_time_ms", _CLIENT_KEEPALIVE_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_credentials(credentials_dir: str | os.PathLike[str]) -> grpc.ServerCredentials:
    creds = identity.load_server_credentials(credentials_dir)
    return grpc.ssl_server_credentials(
        [(creds.private_key_pem, creds.certificate_pem)],
        root_certificates=creds.ca_pem,
        require_client_auth=True,
    )


def client_credentials(credentials_dir: str | os.PathLike[str], client_name: str) -> grpc.ChannelCredentials:
    creds = identity.load_client_credentials(credentials_dir, client_name)
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.private_key_pem,
        certificate_chain=creds.certificate_pem,
    )


class BoundServer(NamedTuple):
    """A configured, not yet started server and the port it is bound to (useful for port 0)."""

    server: grpc.Server
    port: int


def make_server(
    address: str,
    credentials_dir: str | os.PathLike[str],
    *,
    max_workers: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    extra_options: ChannelOptions = (),
) -> BoundServer:
    """A gRPC server on address ("127.0.0.1:0" picks a free port) that requires client certificates.

    Add servicers (``securefed.transport.service.add_federation_servicer``) then ``server.start()``.
    Each in-flight RPC holds a worker thread, long polls included: size max_workers above the
    number of clients that poll at once, or polls queue behind one another.
    """
    if max_workers < 1:
        raise ConfigError("max_workers must be at least 1")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="securefed-rpc"),
        interceptors=list(interceptors),
        options=[*server_options(max_message_bytes), *extra_options],
        # Long polls hold a worker each; cap concurrent RPCs so excess callers get
        # RESOURCE_EXHAUSTED instead of queueing without bound.
        maximum_concurrent_rpcs=max_workers * 4,
    )
    try:
        port = server.add_secure_port(address, server_credentials(credentials_dir))
    except RuntimeError as exc:
        raise TransportError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise TransportError(f"cannot listen on {address}: address in use or not local")
    return BoundServer(server, port)


def make_channel(
    address: str,
    credentials_dir: str | os.PathLike[str],
    client_name: str,
    *,
    server_name: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    extra_options: ChannelOptions = (),
) -> grpc.Channel:
    """A secure channel to address, presenting client_name's certificate, trusting only the federation CA.

    server_name overrides the host name checked against the server certificate (when dialling an
    address that is not among the certificate's --host entries, e.g. through a tunnel).
    """
    options = [*channel_options(max_message_bytes), *extra_options]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, client_credentials(credentials_dir, client_name), options=options)
