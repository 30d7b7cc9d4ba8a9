"""Server-side authentication for the Federation service: who is calling, and may it say that?

The caller's identity is the subject of the client certificate that authenticated the TLS
connection, read from gRPC's auth context, never a field of the message. Messages still *name*
their sender (RequestHeader.client_id, AdvertiseKeys.client_id, ...) because they are signed and
stored on their own; ``add_federation_servicer`` refuses, with PERMISSION_DENIED, any request in
which such a field differs from the certificate, before the servicer sees it.

``add_federation_servicer`` is used instead of the generated ``add_FederationServicer_to_server``
because it also:
  * decodes request bytes itself, so malformed protobuf gets INVALID_ARGUMENT (gRPC's own
    deserializer failure surfaces as INTERNAL and logs a traceback per bad message);
  * refuses RPCs over a TLS version below 1.3 (gRPC Python cannot pin the handshake's minimum
    version, but the auth context reports what was negotiated; see securefed.transport.tls);
  * maps securefed errors raised by the servicer to status codes with their one-line message;
    any other exception stays an opaque INTERNAL, so internals do not leak to peers.

gRPC server interceptors cannot do this: they see the method name and metadata, not the
message, so the check lives in the handler wrapper.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import message as pb_message

from securefed import errors
from securefed.transport import identity
from securefed.transport._generated import federation_pb2, federation_pb2_grpc

SERVICE_NAME = "securefed.v1.Federation"
REQUIRED_TLS_VERSION = b"TLSv1.3"

# Fields that, in any client->server message, name the sender. (Fields naming *other* clients,
# such as EncryptedShare.to_client_id or KeyShare.owner_client_id, are deliberately not here.)
SENDER_FIELDS = frozenset({"client_id", "from_client_id"})


@dataclass(frozen=True)
class AuthenticatedPeer:
    client_id: str
    identity_public_key: ed25519.Ed25519PublicKey
    tls_version: str
    certificate: x509.Certificate | None = None  # the one that authenticated the connection (revocation checks)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _peer_certificate(context: grpc.ServicerContext) -> x509.Certificate:
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    # "ssl" today; "tls" once gRPC Python moves to its generic TLS credentials (grpc/grpc#43080).
    if auth.get("transport_security_type") not in ([b"ssl"], [b"tls"]) or len(pems) != 1:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, "a securefed client certificate is required")
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, "unreadable peer certificate")


def authenticate_peer(context: grpc.ServicerContext) -> AuthenticatedPeer:
    """The authenticated caller, from its certificate; aborts UNAUTHENTICATED/PERMISSION_DENIED.

    Only meaningful inside a handler: gRPC has already verified the certificate chain against the
    federation CA (require_client_auth=True); this reads the identity out of it.
    """
    auth = context.auth_context()
    version = (auth.get("ssl_tls_version") or [b""])[0]
    if version != REQUIRED_TLS_VERSION:
        # Fail closed: an auth context that does not report TLS 1.3 is not served.
        _abort(context, grpc.StatusCode.PERMISSION_DENIED, "TLS 1.3 is required")
    cert = _peer_certificate(context)
    try:
        client_id = identity.client_id_from_certificate(cert)
        key = identity.identity_key_from_certificate(cert)
    except errors.CryptoError:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, "peer certificate is not a securefed client certificate")
    # gRPC's own reading of the subject must agree with ours (defence against parser confusion).
    if auth.get("x509_common_name") != [client_id.encode()]:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, "peer certificate is not a securefed client certificate")
    return AuthenticatedPeer(client_id, key, version.decode("ascii", "replace"), cert)


def peer_identity(context: grpc.ServicerContext) -> str:
    """The calling client's id, taken from its TLS certificate (CN = SAN URI name)."""
    return authenticate_peer(context).client_id


def claimed_sender_mismatch(message: pb_message.Message, client_id: str) -> bool:
    """True when any sender-naming field in message (at any depth) differs from client_id.

    An empty sender field also counts as a mismatch: every client message must name its sender.
    """
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if field.name in SENDER_FIELDS and field.type == field.TYPE_STRING:
            if getattr(message, field.name) != client_id:
                return True
        elif field.message_type is not None:
            if field.is_repeated:
                if any(claimed_sender_mismatch(m, client_id) for m in getattr(message, field.name)):
                    return True
            elif message.HasField(field.name) and claimed_sender_mismatch(getattr(message, field.name), client_id):
                return True
    return False


def check_claimed_sender(message: pb_message.Message, peer: AuthenticatedPeer, context: grpc.ServicerContext) -> None:
    """Abort PERMISSION_DENIED unless every sender field equals the certificate's client id."""
    if "header" in message.DESCRIPTOR.fields_by_name and not message.HasField("header"):
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "request header is missing")
    if claimed_sender_mismatch(message, peer.client_id):
        # Say that the check failed, not which field, and do not echo the claimed id.
        _abort(context, grpc.StatusCode.PERMISSION_DENIED, "message names a client other than the authenticated caller")


# ---- error mapping -------------------------------------------------------------------------

_STATUS_FOR_ERROR: tuple[tuple[type[errors.SecureFedError], grpc.StatusCode], ...] = (
    (errors.CertificateError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.NotRegistered, grpc.StatusCode.NOT_FOUND),  # before its base class InvalidMessage
    # A forked or rewound ledger: its own code, so the member knows it is that, not a bad message.
    (errors.LedgerConflict, grpc.StatusCode.DATA_LOSS),
    (errors.InvalidMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.CryptoError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ProtocolAbort, grpc.StatusCode.ABORTED),
    (errors.TransportError, grpc.StatusCode.UNAVAILABLE),
    (errors.SecureFedError, grpc.StatusCode.FAILED_PRECONDITION),
)

_ERROR_FOR_STATUS: dict[grpc.StatusCode, type[errors.SecureFedError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotRegistered,
    grpc.StatusCode.DATA_LOSS: errors.LedgerConflict,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidMessage,
    grpc.StatusCode.PERMISSION_DENIED: errors.CryptoError,
    grpc.StatusCode.UNAUTHENTICATED: errors.CryptoError,
    grpc.StatusCode.ABORTED: errors.ProtocolAbort,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.InvalidMessage,
}


# Errors a peer must react to by their type, not by a status code several errors share: their class
# name travels in trailing metadata and the caller raises that very class (never a string match).
ERROR_TYPE_KEY = "securefed-error-type"
_WIRE_TYPED: dict[str, type[errors.SecureFedError]] = {c.__name__: c for c in (errors.CertificateRevoked,)}


def status_for(exc: errors.SecureFedError) -> grpc.StatusCode:
    """The gRPC status a servicer-raised securefed error is reported with."""
    for cls, code in _STATUS_FOR_ERROR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION  # pragma: no cover - SecureFedError is last


def error_from_rpc(exc: grpc.RpcError) -> errors.SecureFedError:
    """Client side: turn a failed call into a typed securefed error with a one-line message."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or code.name.lower()
    trailing = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
    typed = _WIRE_TYPED.get(trailing.get(ERROR_TYPE_KEY, ""))
    if typed is not None:
        return typed(f"server refused the request: {details}")
    cls = _ERROR_FOR_STATUS.get(code, errors.TransportError)
    return cls(f"server refused the request ({code.name}): {details}")


# ---- the handler wrapper -------------------------------------------------------------------


def _decode(cls: type[pb_message.Message], raw: bytes, context: grpc.ServicerContext) -> pb_message.Message:
    try:
        return cls.FromString(raw)
    except pb_message.DecodeError:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed {cls.DESCRIPTOR.name}")


def _abort_with(context: grpc.ServicerContext, exc: errors.SecureFedError) -> NoReturn:
    name = type(exc).__name__
    if name in _WIRE_TYPED:
        context.set_trailing_metadata(((ERROR_TYPE_KEY, name),))
    _abort(context, status_for(exc), str(exc))


def _run(fn: Callable[[], Any], context: grpc.ServicerContext) -> Any:
    try:
        return fn()
    except errors.SecureFedError as exc:
        _abort_with(context, exc)


def _wrap_response_stream(responses: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    try:
        yield from responses
    except errors.SecureFedError as exc:
        _abort_with(context, exc)


def raw_messages(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a client-streaming servicer method that takes its messages as serialized bytes (it decodes
    them itself, e.g. to avoid copying large payloads). Allowed only for messages that name no sender
    and carry no header, so the claimed-sender check has nothing to look at."""
    fn.raw_messages = True  # type: ignore[attr-defined]
    return fn


def _names_sender(descriptor: Any, seen: frozenset[str] = frozenset()) -> bool:
    if descriptor.full_name in seen:
        return False
    for field in descriptor.fields:
        if field.name in SENDER_FIELDS or field.name == "header":
            return True
        if field.message_type is not None and _names_sender(field.message_type, seen | {descriptor.full_name}):
            return True
    return False


def _serialize_response(response_cls: type[pb_message.Message]) -> Callable[[Any], bytes]:
    """Messages are serialized; bytes a servicer already serialized (a hand-encoded chunk) pass as they are."""
    serialize = response_cls.SerializeToString

    def run(msg: Any) -> bytes:
        return msg if isinstance(msg, bytes) else serialize(msg)

    return run


def _method_handler(method: Any, servicer_fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
    request_cls = getattr(federation_pb2, method.input_type.name)
    response_cls = getattr(federation_pb2, method.output_type.name)
    serialize = _serialize_response(response_cls)
    raw = bool(getattr(servicer_fn, "raw_messages", False))
    if raw and (not method.client_streaming or _names_sender(request_cls.DESCRIPTOR)):
        raise errors.ConfigError(f"{method.full_name}: raw messages only for client streams that name no sender")

    def decoded_stream(raw_iter: Iterator[bytes], peer: AuthenticatedPeer, context: grpc.ServicerContext) -> Iterator[Any]:
        if raw:
            yield from raw_iter  # nothing in these messages names a sender (checked above)
            return
        for item in raw_iter:
            msg = _decode(request_cls, item, context)
            check_claimed_sender(msg, peer, context)
            yield msg

    if method.client_streaming and method.server_streaming:  # pragma: no cover - none in v1
        raise errors.ConfigError(f"bidirectional streaming {method.full_name} is not supported")
    if method.client_streaming:

        def stream_unary(raw_iter: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            peer = authenticate_peer(context)
            return _run(lambda: servicer_fn(decoded_stream(raw_iter, peer, context), context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)

    def prepare(raw: bytes, context: grpc.ServicerContext) -> Any:
        peer = authenticate_peer(context)
        msg = _decode(request_cls, raw, context)
        check_claimed_sender(msg, peer, context)
        return msg

    if method.server_streaming:

        def unary_stream(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            msg = prepare(raw, context)
            return _wrap_response_stream(_run(lambda: servicer_fn(msg, context), context), context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)

    def unary_unary(raw: bytes, context: grpc.ServicerContext) -> Any:
        msg = prepare(raw, context)
        return _run(lambda: servicer_fn(msg, context), context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)


def federation_handler(servicer: federation_pb2_grpc.FederationServicer) -> grpc.GenericRpcHandler:
    """A generic handler serving every Federation method of servicer with the checks above."""
    service = federation_pb2.DESCRIPTOR.services_by_name["Federation"]
    handlers = {
        m.name: _method_handler(m, getattr(servicer, m.name)) for m in service.methods
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def add_federation_servicer(
    server: grpc.Server, servicer: federation_pb2_grpc.FederationServicer
) -> None:
    """Register servicer on server: authenticated, claim-checked, size-limited, errors mapped.

    Servicer methods keep the generated signatures ``(request, context)`` (request iterators for
    client-streaming methods) and may call ``peer_identity(context)`` / ``authenticate_peer``.
    Unimplemented methods answer UNIMPLEMENTED (the generated base class does that).
    """
    server.add_generic_rpc_handlers((federation_handler(servicer),))


@functools.cache
def method_path(name: str) -> str:
    """Full gRPC method path, e.g. method_path("GetStatus") -> "/securefed.v1.Federation/GetStatus"."""
    service = federation_pb2.DESCRIPTOR.services_by_name["Federation"]
    if name not in service.methods_by_name:
        raise errors.ConfigError(f"unknown Federation method {name!r}")
    return f"/{SERVICE_NAME}/{name}"
