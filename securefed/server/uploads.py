"""The uploads the coordinator holds while they arrive: one ``Upload`` per declared transfer, per member.

A table, not a protocol: ``server.transfers`` admits an upload (every check first) and only then
adds it here. What bounds a hostile member's memory lives here: at most ``per_member`` incomplete
uploads each (opening another discards the oldest), buffers that grow with bytes received, freed
when handed to the round or when the attempt ends, and a stream epoch so the newest stream on an
upload is its only writer.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

from securefed.errors import InvalidMessage, StaleMessage
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.chunking import PartsReceiver
from securefed.transport.limits import TRANSFER_CHUNK_BYTES, UPLOADS_PER_MEMBER


class UploadStatus(enum.Enum):
    RECEIVING = "receiving"
    DELIVERING = "delivering"  # whole; being handed to the round
    DELIVERED = "delivered"  # the round took it; the buffers are gone
    DISCARDED = "discarded"  # replaced by a newer upload of the member, refused by the round, or its attempt ended


@dataclass(eq=False)
class Upload:
    """One declared upload; its ``lock`` orders writes, its ``epoch`` names the stream allowed to write."""

    id: bytes
    member: str
    header: pb.RequestHeader  # as opened: the attempt, stage and session it is for
    kind: int  # pb.TransferKind
    ring_bits: int
    receiver: PartsReceiver | None
    total: int = 0
    status: UploadStatus = UploadStatus.RECEIVING
    epoch: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.receiver is not None:
            self.total = self.receiver.total

    @property
    def committed(self) -> int:
        if self.status in (UploadStatus.DELIVERING, UploadStatus.DELIVERED):
            return self.total
        r = self.receiver
        return r.committed if r is not None and self.status is UploadStatus.RECEIVING else 0

    @property
    def buffered(self) -> int:
        r = self.receiver
        return r.committed if r is not None else 0

    def state(self) -> pb.TransferState:
        return pb.TransferState(transfer_id=self.id, committed=self.committed, total_size=self.total,
                                complete=self.status is UploadStatus.DELIVERED, chunk_bytes=TRANSFER_CHUNK_BYTES)

    def attach(self) -> int:
        """A new stream takes over: older ones are refused at their next chunk."""
        with self.lock:
            self.epoch += 1
            return self.epoch

    def write(self, epoch: int, offset: int, data) -> bool:
        """Append under the lock; True once every byte is in and the digest matched."""
        with self.lock:
            if epoch != self.epoch:
                raise StaleMessage("a newer stream took over this upload")
            if self.status is not UploadStatus.RECEIVING or self.receiver is None:
                raise InvalidMessage(f"this upload takes no more data ({self.status.value})")
            self.receiver.write(offset, data)
            return self.receiver.complete

    def take_parts(self) -> list[bytearray | memoryview] | None:
        """The parts, exactly once (None if another stream took them), to hand to the round."""
        with self.lock:
            r = self.receiver
            if self.status is not UploadStatus.RECEIVING or r is None or not r.complete:
                return None
            self.status, self.receiver = UploadStatus.DELIVERING, None
            return r.parts()

    def settle(self, status: UploadStatus) -> None:
        with self.lock:
            self.status, self.receiver = status, None


class UploadTable:
    """Uploads by member and id. Thread-safe; never calls out while holding its lock."""

    def __init__(self, *, per_member: int | None = UPLOADS_PER_MEMBER) -> None:
        self.per_member = per_member  # None: unbounded (what the attack tests' negative control runs)
        self._lock = threading.Lock()
        self._by_member: dict[str, dict[bytes, Upload]] = {}

    def find(self, member: str, tid: bytes) -> Upload | None:
        with self._lock:
            return self._by_member.get(member, {}).get(bytes(tid))

    def get(self, member: str, tid: bytes) -> Upload:
        up = self.find(member, tid)
        if up is None:
            raise InvalidMessage("no such upload is open for you (OpenTransfer first; it ends with its round)")
        return up

    def add(self, up: Upload) -> Upload:
        """The upload with this id (an existing one wins); the member's oldest incomplete uploads beyond
        ``per_member`` are discarded."""
        with self._lock:
            mine = self._by_member.setdefault(up.member, {})
            if up.id in mine:
                return mine[up.id]
            mine[up.id] = up
            if self.per_member is not None:
                pending = [u for u in mine.values() if u.status is UploadStatus.RECEIVING]
                for old in pending[: max(0, len(pending) - self.per_member)]:
                    del mine[old.id]
                    old.settle(UploadStatus.DISCARDED)  # its stream, if any, is refused at its next chunk
            return up

    def drop(self, up: Upload) -> None:
        with self._lock:
            mine = self._by_member.get(up.member, {})
            if mine.get(up.id) is up:
                del mine[up.id]
        up.settle(UploadStatus.DISCARDED)

    def clear(self) -> None:
        """The attempt is over: every upload of it goes, whole or not."""
        with self._lock:
            ups = [u for mine in self._by_member.values() for u in mine.values()]
            self._by_member.clear()
        for up in ups:
            if up.status is not UploadStatus.DELIVERED:
                up.settle(UploadStatus.DISCARDED)

    def buffered_bytes(self, member: str | None = None) -> int:
        """Bytes held for incomplete uploads (of one member, or of all)."""
        with self._lock:
            groups = [self._by_member.get(member, {})] if member is not None else list(self._by_member.values())
            return sum(u.buffered for g in groups for u in g.values())
