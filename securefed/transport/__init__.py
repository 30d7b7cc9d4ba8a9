"""Transport: the securefed.v1 gRPC wire protocol over mutual TLS.

Submodules (import them directly; this package stays light so ``securefed --help`` does not load gRPC):

* ``limits``    message and chunk size limits (8 MiB per message, 4 MiB chunks at most, 64 KiB sent)
* ``identity``  federation CA, server/client certificates, Ed25519 identity binding, loaders
* ``revocation`` the CA-signed revocation list: ``keys revoke``, the server's reloading watch
* ``diagnose``  why a TLS connection failed, in one line with the fix; own-certificate checks
* ``member_kit`` ``keys bundle``: one tar file per member (credentials, CA, list, client.toml)
* ``tls``       ``make_server`` / ``make_channel`` with required client certificates
* ``service``   ``add_federation_servicer``, ``peer_identity``: identity from the certificate,
                claimed-sender checks, malformed-message and error-to-status mapping
* ``chunking``  resumable transfers: parts, digests, slices, ``PartsReceiver``, the chunk codecs
* ``replay``    per-(client, session) sequence numbers for replay rejection
* ``messages``  the generated protobuf modules (``pb``, ``secagg_pb``) and the client stub
* ``codegen``   ``python -m securefed.transport.codegen`` regenerates ``_generated/``

Why the generated stubs are checked in: grpcio-tools (protoc) is a development dependency only,
so an installed securefed needs just grpcio and protobuf at run time; the generated code is
reviewable in diffs next to the .proto change that caused it; and it is pinned to the protoc that
made it, not to whatever a build machine has. tests/transport/test_transport_codegen.py
regenerates into a temporary directory and fails if the checked-in files differ.
"""

from securefed.transport.limits import CHUNK_BYTES, MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION

__all__ = ["CHUNK_BYTES", "MAX_MESSAGE_BYTES", "MAX_PAYLOAD_BYTES", "PROTOCOL_VERSION"]
