"""Chunked payloads reassemble exactly, and every malformed sequence is refused; replay guard."""

from __future__ import annotations

import hashlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import InvalidMessage
from securefed.transport.chunking import ChunkAssembler, split_payload
from securefed.transport.limits import CHUNK_BYTES
from securefed.transport.messages import pb
from securefed.transport.replay import SequenceGuard


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=2000), chunk=st.integers(min_value=1, max_value=300))
def test_split_then_assemble_roundtrips(payload: bytes, chunk: int) -> None:
    chunks = list(split_payload(payload, chunk))
    assert all(len(c.data) <= chunk for c in chunks)
    assert [bool(c.sha256) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    asm = ChunkAssembler(expected_size=len(payload))
    done = [asm.add(c) for c in chunks]
    assert done[-1] and not any(done[:-1])
    assert asm.payload() == payload


def _chunks(n: int = 10, size: int = 4) -> list[pb.Chunk]:
    return list(split_payload(bytes(range(n)), size))


def test_out_of_order_is_refused() -> None:
    c = _chunks()
    asm = ChunkAssembler()
    asm.add(c[0])
    with pytest.raises(InvalidMessage, match="out of order"):
        asm.add(c[2])


def test_duplicate_chunk_is_refused() -> None:
    c = _chunks()
    asm = ChunkAssembler()
    asm.add(c[0])
    with pytest.raises(InvalidMessage, match="out of order"):
        asm.add(c[0])


def test_tampered_data_fails_digest() -> None:
    c = _chunks()
    c[1] = pb.Chunk(offset=c[1].offset, total_size=c[1].total_size, data=b"\xff" + c[1].data[1:])
    asm = ChunkAssembler()
    with pytest.raises(InvalidMessage, match="digest"):
        for x in c:
            asm.add(x)


def test_size_changes_and_limits_are_refused() -> None:
    c = _chunks()
    asm = ChunkAssembler()
    asm.add(c[0])
    with pytest.raises(InvalidMessage, match="total_size changed"):
        asm.add(pb.Chunk(offset=4, total_size=11, data=c[1].data))
    with pytest.raises(InvalidMessage, match="expects 9"):
        ChunkAssembler(expected_size=9).add(c[0])
    with pytest.raises(InvalidMessage, match="exceeds"):
        ChunkAssembler(max_size=5).add(c[0])
    with pytest.raises(InvalidMessage, match="runs past"):
        ChunkAssembler().add(pb.Chunk(offset=0, total_size=2, data=b"abc"))
    with pytest.raises(InvalidMessage, match="exceeds"):
        ChunkAssembler().add(pb.Chunk(offset=0, total_size=CHUNK_BYTES + 1, data=b"\0" * (CHUNK_BYTES + 1)))
    with pytest.raises(InvalidMessage, match="chunk size"):
        list(split_payload(b"x", CHUNK_BYTES + 1))


def test_early_digest_truncation_and_trailing_chunks_are_refused() -> None:
    c = _chunks()
    early = pb.Chunk(offset=0, total_size=10, data=c[0].data, sha256=hashlib.sha256(b"").digest())
    with pytest.raises(InvalidMessage, match="before the final"):
        ChunkAssembler().add(early)
    asm = ChunkAssembler()
    asm.add(c[0])
    with pytest.raises(InvalidMessage, match="incomplete"):
        asm.payload()
    for x in c[1:]:
        asm.add(x)
    with pytest.raises(InvalidMessage, match="after the final"):
        asm.add(c[-1])


def test_empty_payload_is_one_final_chunk() -> None:
    (only,) = split_payload(b"")
    assert only.total_size == 0 and only.sha256 == hashlib.sha256(b"").digest()
    asm = ChunkAssembler()
    assert asm.add(only) and asm.payload() == b""


def test_sequence_guard_rejects_replays_per_client_and_session() -> None:
    g = SequenceGuard()
    s1, s2 = b"\x01" * 32, b"\x02" * 32
    g.accept("alice", s1, 1)
    g.accept("alice", s1, 5)
    g.accept("bob", s1, 1)  # other client, own counter
    g.accept("alice", s2, 1)  # other session, own counter
    for seq in (5, 4, 1):
        with pytest.raises(InvalidMessage, match="replayed"):
            g.accept("alice", s1, seq)
    with pytest.raises(InvalidMessage, match="start at 1"):
        g.accept("carol", s1, 0)
    g.forget(s1)
    g.accept("alice", s1, 1)  # a forgotten session starts over (its id never recurs in practice)
    g.accept("alice", s2, 2)


def test_sequence_guard_accepts_each_sequence_once_under_concurrency() -> None:
    g = SequenceGuard()
    accepted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for seq in range(1, 200):
            try:
                g.accept("alice", b"s", seq)
            except InvalidMessage:
                continue
            with lock:
                accepted.append(seq)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == len(set(accepted))
    assert 199 in accepted  # the highest sequence is always accepted, exactly once
