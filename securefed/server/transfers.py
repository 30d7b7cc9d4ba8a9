"""Resumable transfers on the coordinator: uploads admitted before a byte is buffered and handed to the
round once whole; downloads served from any offset (protocols/transfers.md).

``OpenTransfer`` runs every check the finished upload will face (the live attempt and stage, cohort
membership, a rising sequence number, not answered yet, and the exact part sizes the round expects
from this member, ``RoundDriver.check_upload``), then names the upload by a digest of what was
declared: asking again is how a member learns where to resume. ``SendTransfer`` appends to an upload
the caller opened, nothing else; at most ``UPLOAD_STREAMS_PER_MEMBER`` streams per member run at once
(refused before a message is read), and the newest stream on an upload is its only writer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from securefed.errors import InvalidMessage, SecureFedError, TransportError
from securefed.logs import get_logger, log
from securefed.server.mailbox import Mailbox
from securefed.server.uploads import Upload, UploadStatus, UploadTable
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.chunking import (
    DIGEST_BYTES,
    PartsReceiver,
    check_part_sizes,
    content_digest,
    decode_transfer_chunk,
    encode_aggregate_chunk,
    part_slices,
    transfer_id,
    views,
)
from securefed.transport.limits import TRANSFER_CHUNK_BYTES, UPLOAD_STREAMS_PER_MEMBER

logger = get_logger("server.rpc")

_KINDS = (pb.TRANSFER_KIND_RING_VECTOR, pb.TRANSFER_KIND_CIPHERTEXTS)


class UploadIntake:
    """``open`` and ``receive`` for the servicer; the uploads themselves live in ``mailbox.uploads``."""

    def __init__(self, mailbox: Mailbox, *, streams_per_member: int = UPLOAD_STREAMS_PER_MEMBER) -> None:
        self.mailbox = mailbox
        self.table: UploadTable = mailbox.uploads
        self.streams_per_member = streams_per_member
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()

    def open(self, member: str, req: pb.TransferOpenRequest) -> pb.TransferState:
        """Admit (or find) the declared upload; every check happens before anything is buffered."""
        kind, h = int(req.kind), req.header
        if kind not in _KINDS:
            raise InvalidMessage("unknown transfer kind")
        ring_bits = int(req.ring_bits) if kind == pb.TRANSFER_KIND_RING_VECTOR else 0
        if kind == pb.TRANSFER_KIND_RING_VECTOR and ring_bits not in (32, 64):
            raise InvalidMessage("ring_bits must be 32 or 64")
        sizes = check_part_sizes(req.part_sizes)
        if len(req.sha256) != DIGEST_BYTES:
            raise InvalidMessage("a transfer's digest must be 32 bytes (SHA-256)")
        tid = transfer_id(member, h.round, h.stage, kind, ring_bits, sizes, bytes(req.sha256))
        known = self.table.find(member, tid)
        if known is not None and known.status in (UploadStatus.DELIVERING, UploadStatus.DELIVERED):
            return known.state()  # whole already: nothing to check again, nothing to resend
        up = self.mailbox.admit_upload(member, h, kind, ring_bits, sizes, then=lambda: self.table.add(Upload(
            tid, member, pb.RequestHeader(client_id=member, session_id=h.session_id, round=h.round, stage=h.stage),
            kind, ring_bits, PartsReceiver(sizes, bytes(req.sha256)))))
        if up.committed:
            log(logger, "upload resumed", client=member, attempt=h.round, offset=up.committed, total=up.total)
        return up.state()

    def receive(self, member: str, raw_messages: Iterator[bytes]) -> pb.TransferState:
        """One stream of ``TransferChunk`` bytes for an upload this member opened."""
        with self._lock:
            if self._streams.get(member, 0) >= self.streams_per_member:
                # UNAVAILABLE: the member backs off and resumes once its interrupted stream is gone.
                raise TransportError("too many upload streams from you at once; retry shortly")
            self._streams[member] = self._streams.get(member, 0) + 1
        try:
            return self._receive(member, raw_messages)
        finally:
            with self._lock:
                self._streams[member] -= 1

    def _receive(self, member: str, raw_messages: Iterator[bytes]) -> pb.TransferState:
        up: Upload | None = None
        epoch = 0
        for raw in raw_messages:
            msg = decode_transfer_chunk(raw)
            if up is None:
                up = self.table.get(member, msg.transfer_id)
                epoch = up.attach()
            elif msg.transfer_id != up.id:
                raise InvalidMessage("one upload per stream")
            try:
                whole = up.write(epoch, msg.offset, msg.data)
            except InvalidMessage:
                r = up.receiver
                if r is not None and r.failed:
                    self.table.drop(up)  # a digest mismatch: these bytes can never complete
                raise
            self.mailbox.count_upload(member, len(raw))
            if whole:
                self._deliver(up)
        if up is None:
            raise InvalidMessage("empty upload stream")
        return up.state()

    def _deliver(self, up: Upload) -> None:
        parts = up.take_parts()
        if parts is None:
            return  # another stream of this upload delivered it
        try:
            self.mailbox.take_upload(up.member, up.header, up.kind, up.ring_bits, parts)
        except SecureFedError:
            self.table.drop(up)
            raise
        up.settle(UploadStatus.DELIVERED)


@dataclass(frozen=True)
class Served:
    """One content a download serves: its parts, their sizes and the digest a resume must match."""

    round: int
    kind: int
    parts: tuple[memoryview, ...]
    sizes: tuple[int, ...]
    sha256: bytes


class Downloads:
    """``DownloadAggregate`` streams; each content's digest is computed once (a few are cached)."""

    def __init__(self, cache_size: int = 4) -> None:
        self._cache: OrderedDict[tuple, tuple[Served, Sequence]] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def content(self, rnd: int, kind: int, parts: Sequence) -> Served:
        # Keyed by the parts' identities; the entry holds them, so an id cannot be reused meanwhile.
        if not parts:
            raise InvalidMessage("nothing to download")
        key = (rnd, kind, tuple(id(p) for p in parts))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[0]
        vs = tuple(views(parts))
        served = Served(rnd, kind, vs, tuple(len(v) for v in vs), content_digest(vs))
        with self._lock:
            self._cache[key] = (served, parts)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return served

    def stream(self, served: Served, resume_sha256: bytes, resume_offset: int) -> Iterator[bytes]:
        """Serialized ``AggregateChunk`` messages from the resume point (from 0 if the content changed)."""
        total = sum(served.sizes)
        start = resume_offset if resume_sha256 == served.sha256 else 0
        if start > total:
            raise InvalidMessage(f"resume offset {start} is past the end of the download ({total} bytes)")
        first = {"content_sha256": served.sha256, "part_sizes": served.sizes}
        n = len(served.parts)
        for index, offset, data in part_slices(served.parts, start, TRANSFER_CHUNK_BYTES):
            yield encode_aggregate_chunk(served.round, served.kind, index, n, offset, served.sizes[index], data, **first)
            first = {}
        if first:  # nothing left to send: the metadata alone, at the end
            yield encode_aggregate_chunk(served.round, served.kind, n - 1, n, served.sizes[-1], served.sizes[-1],
                                         memoryview(b""), **first)
