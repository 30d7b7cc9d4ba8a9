"""Chunked transfers reassemble exactly from any resume point, refuse every malformed sequence, and the
hand-written codecs agree with the protobuf runtime; replay guard."""

from __future__ import annotations

import hashlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import InvalidMessage
from securefed.transport.chunking import (
    PartsReceiver,
    content_digest,
    decode_aggregate_chunk,
    decode_transfer_chunk,
    encode_aggregate_chunk,
    encode_transfer_chunk,
    part_slices,
    slices,
    transfer_id,
    views,
)
from securefed.transport.limits import CHUNK_BYTES, MAX_TRANSFER_PARTS
from securefed.transport.messages import pb
from securefed.transport.replay import SequenceGuard

_parts = st.lists(st.binary(max_size=300), min_size=1, max_size=6)


def _receiver(parts: list[bytes]) -> PartsReceiver:
    return PartsReceiver([len(p) for p in parts], content_digest(parts))


@settings(max_examples=80, deadline=None)
@given(parts=_parts, chunk=st.integers(1, 200), cuts=st.lists(st.integers(0, 2000), max_size=4), lost=st.integers(0, 150))
def test_a_transfer_resumed_at_any_points_reassembles_exactly(parts, chunk, cuts, lost):
    """A sender restarts from the receiver's committed offset after each cut; repeats are trimmed."""
    vs = views(parts)
    total = sum(len(p) for p in parts)
    recv = _receiver(parts)
    for cut in sorted(c % (total + 1) for c in cuts) + [total]:
        if recv.complete:
            break  # the receiver said so: nothing is sent after that
        start = max(0, recv.committed - lost)  # the sender may repeat what was in flight
        for off, pieces in slices(vs, start, chunk):
            if off >= cut:
                break
            data = b"".join(pieces)
            assert len(data) <= chunk
            recv.write(off, data)
    assert recv.complete and [bytes(p) for p in recv.parts()] == parts
    assert all(isinstance(p, bytearray) for p in recv.parts())


@settings(max_examples=60, deadline=None)
@given(parts=_parts, chunk=st.integers(1, 200), start=st.integers(0, 2000))
def test_part_slices_never_span_parts_and_cover_the_rest(parts, chunk, start):
    vs = views(parts)
    total = sum(len(p) for p in parts)
    start %= total + 1
    bases = [sum(len(p) for p in parts[:i]) for i in range(len(parts))]
    got = list(part_slices(vs, start, chunk))
    assert b"".join(bytes(s) for _, _, s in got) == b"".join(parts)[start:]
    for index, offset, s in got:
        assert 0 < len(s) <= chunk and offset + len(s) <= len(parts[index])
        assert bytes(s) == parts[index][offset:offset + len(s)] and bases[index] + offset >= start


def test_gaps_overruns_tampering_and_late_data_are_refused():
    parts = [b"abcdef", b"", b"ghij"]
    recv = _receiver(parts)
    assert recv.write(0, b"abc") == 3
    assert recv.write(1, b"bc") == 0  # a pure repeat: nothing new
    with pytest.raises(InvalidMessage, match="gap"):
        recv.write(4, b"ef")
    with pytest.raises(InvalidMessage, match="past the declared"):
        recv.write(3, b"defghijk")
    assert recv.write(2, b"cdefg") == 4  # overlap trimmed, spans the empty part
    with pytest.raises(InvalidMessage, match="digest"):
        recv.write(7, b"hiX")
    assert recv.failed and not recv.complete
    with pytest.raises(InvalidMessage, match="failed"):
        recv.write(7, b"hij")
    with pytest.raises(InvalidMessage, match="incomplete"):
        recv.parts()
    done = _receiver(parts)
    done.write(0, b"abcdefghij")
    with pytest.raises(InvalidMessage, match="after the transfer"):
        done.write(10, b"")
    with pytest.raises(InvalidMessage, match="exceeds"):
        PartsReceiver([CHUNK_BYTES + 1], content_digest([bytes(CHUNK_BYTES + 1)])).write(0, bytes(CHUNK_BYTES + 1))


def test_declarations_are_bounded_before_anything_is_buffered():
    digest = bytes(32)
    with pytest.raises(InvalidMessage, match="parts"):
        PartsReceiver([], digest)
    with pytest.raises(InvalidMessage, match="parts"):
        PartsReceiver([1] * (MAX_TRANSFER_PARTS + 1), digest)
    with pytest.raises(InvalidMessage, match="limit"):
        PartsReceiver([1 << 40], digest)
    with pytest.raises(InvalidMessage, match="limit"):
        PartsReceiver([10, 20], digest, max_bytes=29)
    with pytest.raises(InvalidMessage, match="32 bytes"):
        PartsReceiver([1], b"short")
    with pytest.raises(InvalidMessage, match="digest"):
        PartsReceiver([0], digest)  # empty content: checked at once
    empty = PartsReceiver([0, 0], hashlib.sha256(b"").digest())
    assert empty.complete and empty.parts() == [bytearray(), bytearray()]
    with pytest.raises(InvalidMessage, match="chunk size"):
        list(slices(views([b"x"]), 0, CHUNK_BYTES + 1))
    with pytest.raises(InvalidMessage, match="past the end"):
        list(slices(views([b"x"]), 2, 1))


def test_the_transfer_id_binds_every_declared_field():
    base = ("alice", 3, pb.STAGE_MASKED_INPUT, pb.TRANSFER_KIND_RING_VECTOR, 32, (8, 4), bytes(32))
    ids = {transfer_id(*base)}
    for i, other in enumerate(("bob", 4, pb.STAGE_PLAINTEXT_UPLOAD, pb.TRANSFER_KIND_CIPHERTEXTS, 64, (4, 8),
                               bytes([1]) + bytes(31))):
        ids.add(transfer_id(*base[:i], other, *base[i + 1:]))
    ids.add(transfer_id("alice", 3, pb.STAGE_MASKED_INPUT, pb.TRANSFER_KIND_RING_VECTOR, 32, (12,), bytes(32)))
    assert len(ids) == 9 and transfer_id(*base) in ids and all(len(i) == 32 for i in ids)


# ---- the hand-written codecs against the protobuf runtime --------------------------------------------

_u64 = st.integers(0, (1 << 64) - 1)
_u32 = st.integers(0, (1 << 32) - 1)


@settings(max_examples=150, deadline=None)
@given(tid=st.binary(max_size=40), offset=_u64, pieces=st.lists(st.binary(max_size=50), max_size=4))
def test_transfer_chunk_codec_matches_protobuf(tid, offset, pieces):
    raw = encode_transfer_chunk(tid, offset, views(pieces))
    want = pb.TransferChunk(transfer_id=tid, offset=offset, data=b"".join(pieces))
    assert raw == want.SerializeToString()
    got = decode_transfer_chunk(raw)
    assert (got.transfer_id, got.offset, bytes(got.data)) == (tid, offset, b"".join(pieces))


@settings(max_examples=150, deadline=None)
@given(rnd=_u64, kind=st.sampled_from([0, 1, 2, 77]), index=_u32, count=_u32, offset=_u64, size=_u64,
       data=st.binary(max_size=60), sha=st.binary(max_size=40), sizes=st.lists(_u64, max_size=5))
def test_aggregate_chunk_codec_matches_protobuf(rnd, kind, index, count, offset, size, data, sha, sizes):
    raw = encode_aggregate_chunk(rnd, kind, index, count, offset, size, memoryview(data), sha, sizes)
    want = pb.AggregateChunk(round=rnd, kind=kind, index=index, count=count, content_sha256=sha, part_sizes=sizes)
    if offset or size or data:
        want.chunk.CopyFrom(pb.Chunk(offset=offset, total_size=size, data=data))
    assert raw == want.SerializeToString()
    got = decode_aggregate_chunk(raw)
    assert (got.round, got.kind, got.index, got.count, got.offset, got.part_size, bytes(got.data),
            got.content_sha256, got.part_sizes) == (rnd, kind, index, count, offset, size, data, sha, tuple(sizes))


def _parse(cls, raw):
    try:
        return cls.FromString(raw)
    except Exception:
        return None


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(st.binary(max_size=80), st.builds(
    lambda tid, off, data, cut, junk: pb.TransferChunk(transfer_id=tid, offset=off, data=data).SerializeToString()[:cut]
    + junk, st.binary(max_size=33), _u64, st.binary(max_size=20), st.integers(0, 80), st.binary(max_size=6))))
def test_a_fuzzed_transfer_chunk_is_refused_or_decoded_as_protobuf_would(raw):
    """Differential: the decoder may be stricter than protobuf, never different."""
    try:
        got = decode_transfer_chunk(raw)
    except InvalidMessage:
        return
    ref = _parse(pb.TransferChunk, raw)
    assert ref is not None
    assert (got.transfer_id, got.offset, bytes(got.data)) == (ref.transfer_id, ref.offset, ref.data)


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(st.binary(max_size=80), st.builds(
    lambda r, i, d, sizes, cut, junk: pb.AggregateChunk(
        round=r, index=i, count=i // 2, chunk=pb.Chunk(offset=i, total_size=r, data=d), content_sha256=d,
        part_sizes=sizes).SerializeToString()[:cut] + junk,
    _u64, _u32, st.binary(max_size=20), st.lists(_u64, max_size=3), st.integers(0, 90), st.binary(max_size=6))))
def test_a_fuzzed_aggregate_chunk_is_refused_or_decoded_as_protobuf_would(raw):
    try:
        got = decode_aggregate_chunk(raw)
    except InvalidMessage:
        return
    ref = _parse(pb.AggregateChunk, raw)
    assert ref is not None
    assert (got.round, got.kind, got.index, got.count, got.offset, got.part_size, bytes(got.data),
            got.content_sha256, got.part_sizes) == (
        ref.round, ref.kind, ref.index, ref.count, ref.chunk.offset, ref.chunk.total_size, ref.chunk.data,
        ref.content_sha256, tuple(ref.part_sizes))


def test_the_decoders_refuse_what_protobuf_would_merge_or_reinterpret():
    one = pb.TransferChunk(transfer_id=b"a", offset=1).SerializeToString()
    with pytest.raises(InvalidMessage, match="repeated"):
        decode_transfer_chunk(one + one)  # protobuf: last one wins
    with pytest.raises(InvalidMessage, match="wrong type"):
        decode_transfer_chunk(b"\x12\x01x")  # offset as a length-delimited field: protobuf keeps it unknown
    with pytest.raises(InvalidMessage, match="out of range"):
        decode_aggregate_chunk(pb.AggregateChunk(index=0).SerializeToString() + b"\x18" + b"\xff" * 9 + b"\x01")
    with pytest.raises(InvalidMessage, match="varint"):
        decode_transfer_chunk(b"\x10" + b"\xff" * 11)
    # Unknown fields are skipped, as protobuf does.
    assert decode_transfer_chunk(one + b"\xa0\x06\x05" + b"\x2d" + bytes(4)).offset == 1


def test_encoding_copies_the_data_once():
    data = bytes(range(256)) * 1024
    raw = encode_transfer_chunk(b"i" * 32, 5, views([data]))
    got = decode_transfer_chunk(raw)
    assert got.data.obj is raw  # the decoded data is a view into the message, not a copy


# ---- the replay guard -----------------------------------------------------------------------------------

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
