"""The gRPC face of the coordinator: ``securefed.v1.Federation`` over mutual TLS.

Every handler first authenticates the caller from its certificate (``transport.service`` already
refused messages naming another sender), checks what only the wire can check (signatures over
privacy events), then hands typed data to the ``Mailbox`` (requests), to ``server.transfers``
(resumable uploads and downloads) or to the ``Coordinator`` (status). Errors are securefed errors,
which the transport maps to gRPC status codes with a one-line message.
"""

from __future__ import annotations

import hmac
import logging
from typing import Iterator

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from securefed import __version__
from securefed.crypto.keys import verify_signature
from securefed.errors import (
    CertificateError,
    CertificateRevoked,
    CryptoError,
    InvalidMessage,
    LedgerConflict,
    SecureFedError,
)
from securefed.logs import get_logger, log
from securefed.privacy.events import DpEvent
from securefed.privacy.ledger import ENTRY_CONTEXT, entry_hash
from securefed.server.coordinator import Coordinator, ServerState
from securefed.server.exclusion import mark_revoked
from securefed.server.security_log import KIND_NAMES, SecurityLog, peer_address
from securefed.server.stage_clock import attempt_over
from securefed.server.transfers import Downloads, UploadIntake
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import federation_pb2_grpc as pb_grpc
from securefed.transport.limits import CHUNK_BYTES, MAX_MESSAGE_BYTES, MAX_POLL_WAIT_MS, PROTOCOL_VERSION
from securefed.transport.revocation import RevocationWatch
from securefed.transport.service import authenticate_peer, raw_messages

logger = get_logger("server.rpc")

_SUPERSEDED = "UploadMasked and UploadCiphertext are superseded by OpenTransfer and SendTransfer (resumable)"

_STATE = {
    ServerState.STARTING: pb.ROUND_STATE_IDLE, ServerState.WAITING: pb.ROUND_STATE_IDLE,
    ServerState.RUNNING: pb.ROUND_STATE_RUNNING, ServerState.AGGREGATING: pb.ROUND_STATE_AGGREGATING,
    ServerState.FINISHED: pb.ROUND_STATE_FINISHED, ServerState.FAILED: pb.ROUND_STATE_ABORTED,
}


class FederationService(pb_grpc.FederationServicer):
    def __init__(self, coordinator: Coordinator, federation_id: str = "securefed",
                 revocations: RevocationWatch | None = None, ca: x509.Certificate | None = None) -> None:
        self.co = coordinator
        self.mailbox = coordinator.mailbox
        self.federation_id = federation_id
        self.uploads = UploadIntake(self.mailbox)
        self.downloads = Downloads()
        self.revocations = revocations
        self._refused: set[tuple[str, int]] = set()  # revoked (member, serial) already logged
        if revocations is not None:  # registration and cohort selection check the same list
            self.mailbox.is_revoked = revocations.is_revoked
        self.alerts = coordinator.culprits.alerts  # one log: its per-source limits see every alert
        # The pinned CA, checked at every call besides gRPC's trust store (which trusts whatever ca.pem holds).
        self.ca = ca if ca is not None else (revocations.ca if revocations is not None else None)
        self._issued: set[bytes] = set()  # certificates already seen to be issued by it

    # --- helpers ------------------------------------------------------------------------------
    def _peer(self, context: grpc.ServicerContext) -> tuple[str, bytes]:
        """The caller, from its certificate; a revoked certificate is refused at every call."""
        p = authenticate_peer(context)
        if self.ca is not None and p.certificate is not None:
            self._check_issuer(p.client_id, p.certificate, context)
        if self.revocations is not None and p.certificate is not None and self.revocations.is_revoked(p.certificate):
            serial = p.certificate.serial_number
            # Every attempt counted (the alert log writes a few an hour and counts the rest): the operator
            # sees a revoked member trying to come back.
            self.alerts.record(client=p.client_id, kind="revoked certificate used", source="server",
                               address=peer_address(context.peer()), detail=f"certificate serial {serial:x} is revoked")
            if (p.client_id, serial) not in self._refused:
                self._refused.add((p.client_id, serial))
                log(logger, "refused a revoked member", level=logging.WARNING, client=p.client_id,
                    serial=f"{serial:x}")
            mark_revoked(self.mailbox, p.client_id, f"serial {serial:x}")  # out of the live attempt at once
            raise CertificateRevoked(f"the certificate of {p.client_id!r} (serial {serial:x}) is revoked by the "
                                     "federation operator; ask them for a new one (securefed keys bundle)")
        return p.client_id, tid.raw_public_key(p.identity_public_key)

    def _check_issuer(self, cid: str, cert: x509.Certificate, context: grpc.ServicerContext) -> None:
        fp = cert.fingerprint(hashes.SHA256())
        if fp in self._issued:
            return
        try:
            cert.verify_directly_issued_by(self.ca)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - InvalidSignature, another issuer, another key type: all refused
            self.alerts.record(client=cid, kind="certificate from another CA", source="server",
                               address=peer_address(context.peer()),
                               detail="a TLS client certificate the federation CA did not issue")
            raise CertificateError("your certificate was not issued by this federation's CA") from None
        if len(self._issued) < 100_000:  # bounded: one entry per certified member certificate
            self._issued.add(fp)

    # --- RPCs ---------------------------------------------------------------------------------
    def Register(self, request: pb.RegisterRequest, context) -> pb.RegisterResponse:
        cid, key = self._peer(context)
        if request.identity_public_key and not hmac.compare_digest(request.identity_public_key, key):
            self.alerts.record(client=cid, kind="failed registration", source="server", address=peer_address(context.peer()),
                               detail="registered with an identity key other than the one its certificate binds")
            raise CryptoError("identity key does not match the one bound in your certificate")
        # The certificate that authenticated this connection goes into the plans' cohort lists, so the
        # other members can check the key they are given is certified by the federation CA.
        pem = context.auth_context()["x509_pem_cert"][0]
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        self.mailbox.register(cid, key, tuple(request.supported_modes), certificate=der)
        st = self.co.status()
        return pb.RegisterResponse(client_id=cid, federation_id=self.federation_id, current_round=st["attempt"] or 0,
                                   max_message_bytes=MAX_MESSAGE_BYTES, chunk_bytes=CHUNK_BYTES,
                                   heartbeat_interval_ms=int(self.co.config.deadlines.heartbeat_s * 1000))

    def PollTask(self, request: pb.PollTaskRequest, context) -> pb.Task:
        cid, _ = self._peer(context)
        self.mailbox.count_in(request.ByteSize())
        wait_ms = min(request.max_wait_ms or 0, MAX_POLL_WAIT_MS)
        task = self.mailbox.poll(cid, wait_ms / 1000.0, attempt=request.header.round)
        self.mailbox.count_out(task.ByteSize())
        return task

    def SubmitResult(self, request: pb.SubmitResultRequest, context) -> pb.SubmitResultResponse:
        cid, _ = self._peer(context)
        self.mailbox.submit(cid, request, request.ByteSize())
        return pb.SubmitResultResponse(accepted=True)

    def UploadMasked(self, request_iterator: Iterator[pb.MaskedInputChunk], context) -> pb.UploadReceipt:
        self._peer(context)
        raise InvalidMessage(_SUPERSEDED)  # before a message is read

    def UploadCiphertext(self, request_iterator: Iterator[pb.CiphertextChunk], context) -> pb.UploadReceipt:
        self._peer(context)
        raise InvalidMessage(_SUPERSEDED)

    def OpenTransfer(self, request: pb.TransferOpenRequest, context) -> pb.TransferState:
        cid, _ = self._peer(context)
        self.mailbox.count_in(request.ByteSize())
        return self.uploads.open(cid, request)

    @raw_messages  # TransferChunk names no sender; decoded by server.transfers without copying the data
    def SendTransfer(self, request_iterator: Iterator[bytes], context) -> pb.TransferState:
        cid, _ = self._peer(context)
        return self.uploads.receive(cid, request_iterator)

    def DownloadAggregate(self, request: pb.DownloadAggregateRequest, context) -> Iterator[bytes]:
        cid, _ = self._peer(context)
        self.mailbox.count_in(request.ByteSize())
        rnd, kind, parts = self.mailbox.download(cid, request.header)
        served = self.downloads.content(rnd, kind, parts)
        for raw in self.downloads.stream(served, bytes(request.resume_content_sha256), request.resume_offset):
            self.mailbox.count_out(len(raw))
            yield raw  # serialized AggregateChunk

    def ReportPrivacyEvent(self, request: pb.PrivacyEventReport, context) -> pb.PrivacyEventAck:
        cid, key = self._peer(context)
        try:
            return self._privacy_event(cid, key, request)
        except SecureFedError as exc:  # the member leaves the session: the round does not wait for it
            if isinstance(exc, (LedgerConflict, CryptoError)):
                self.alerts.record(client=cid, kind="ledger conflict" if isinstance(exc, LedgerConflict)
                                   else "authentication failed", detail=str(exc), source="server",
                                   attempt=request.header.round, address=peer_address(context.peer()))
            self.mailbox.refuse(cid, request.header.round, str(exc))
            raise

    def _privacy_event(self, cid: str, key: bytes, request: pb.PrivacyEventReport) -> pb.PrivacyEventAck:
        ev = DpEvent.from_json(request.entry)  # InvalidMessage unless canonical and valid
        if ev.client_id != cid:
            raise InvalidMessage("privacy event names another client")
        if ev.round_id != request.header.round:
            raise InvalidMessage(f"privacy event is for round {ev.round_id}, the report says {request.header.round}")
        if len(request.prev_hash) != 32 or len(request.entry_hash) != 32:
            raise InvalidMessage("prev_hash and entry_hash must be 32 bytes")
        want = bytes.fromhex(entry_hash(request.prev_hash.hex(), bytes(request.entry)))
        if not hmac.compare_digest(want, request.entry_hash):
            raise InvalidMessage("entry_hash does not match prev_hash and the entry")
        verify_signature(key, bytes(request.signature), ENTRY_CONTEXT + bytes(request.entry_hash))
        self.mailbox.count_in(request.ByteSize())
        self.mailbox.check_header(cid, request.header)
        # LedgerConflict (refused) when it contradicts an entry this member reported before.
        new = self.co.roundlog.record_privacy_event(
            ev.round_id, cid, bytes(request.entry).decode("utf-8"), bytes(request.signature), ledger_seq=request.sequence,
            entry_hash=request.entry_hash.hex(), prev_hash=request.prev_hash.hex(), identity_key=key.hex())
        log(logger, "privacy event recorded", client=cid, attempt=ev.round_id, ledger_seq=request.sequence,
            noise_multiplier=ev.noise_multiplier, steps=ev.steps, sample_rate=ev.sample_rate, new=new)
        return pb.PrivacyEventAck(recorded_sequence=request.sequence)

    def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.StatusResponse:
        cid, _ = self._peer(context)
        st = self.co.status()
        return pb.StatusResponse(
            protocol_version=PROTOCOL_VERSION, server_version=__version__, client_id=cid,
            current_round=st["attempt"] or 0, stage=st["stage_code"], state=_STATE[ServerState(st["state"])],
            registered_clients=st["registered"], cohort_size=len(st["cohort"]),
            completed_rounds=st["completed_rounds"],
            global_adapter_sha256=bytes.fromhex(st["global_digest"]) if st["global_digest"] else b"",
            detail=st["detail"],
        )

    def SendHeartbeat(self, request: pb.MemberHeartbeat, context) -> pb.HeartbeatAck:
        cid, _ = self._peer(context)
        self.mailbox.heartbeat(cid, request)
        return pb.HeartbeatAck(heartbeat_interval_ms=int(self.co.config.deadlines.heartbeat_s * 1000),
                               attempt_over=attempt_over(self.mailbox, cid, request.header.round))

    def ReportSecurityAlert(self, request: pb.SecurityAlertReport, context) -> pb.SecurityAlertAck:
        cid, _ = self._peer(context)
        kind = KIND_NAMES.get(request.kind, "security alert")
        # A member's word, not verified here: kept and shown as reported by it (sanitised, bounded, rate-limited).
        self.alerts.record(client=cid, kind=kind, detail=request.detail[:1000], source="member",
                           attempt=request.header.round, address=peer_address(context.peer()))
        return pb.SecurityAlertAck(recorded=True)
