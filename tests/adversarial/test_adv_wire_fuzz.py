"""Everything a peer sends over the network, fuzzed through the real decoding path.

bytes --protobuf--> securefed.v1 message --securefed.protocol.secagg_wire--> secagg dataclass --> the REAL
client or server state machine at the matching stage. Whatever the bytes, the outcome is a typed
``SecureFedError`` (``InvalidMessage`` at the server, ``ProtocolAbort`` at a client) or a valid step;
never another exception. A refused message leaves the server's round intact: the honest round still
completes with the exact sum. Chunk reassembly never buffers more than its declared bound.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from securefed.client.bundle_check import decode_global, federation_settings
from securefed.errors import InvalidMessage, SecureFedError, SecurityAlert
from securefed.protocol import secagg_wire as wire
from securefed.protocol.bundle import STATE_TENSOR, TENSOR_NAME, adapter_digest
from securefed.protocol.plan import CohortIds
from securefed.secagg import OnClientAbort, SecAggParams, SimulatedRound, Stage
from securefed.strategies import StrategySettings
from securefed.training.adapter import AdapterLayout
from securefed.training.config import LoraSettings
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import secagg_pb2 as spb
from securefed.transport.chunking import PartsReceiver

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
N, D = 5, 12
PARAMS = SecAggParams(threshold=3, frac_bits=8)
INPUTS = {c: np.full(D, c / 16) for c in range(1, N + 1)}
IDS = CohortIds({f"org-{c}": c for c in range(1, N + 1)}, {c: f"org-{c}" for c in range(1, N + 1)})
NAMES = st.sampled_from([*IDS.by_name, "", "org-9", "org-1\x00", "Org-1", "x" * 300])


def _copy(rnd: SimulatedRound) -> SimulatedRound:
    return copy.deepcopy(rnd, {id(k): k for k in rnd.identities.values()})


@pytest.fixture(scope="module")
def rounds() -> dict[Stage, SimulatedRound]:
    """An honest round paused before each stage's server messages are delivered (copied per use)."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    out = {}
    for stage in Stage:
        out[stage] = _copy(rnd)
        rnd.step()
    return out


def _fuzz_bytes(data, valid: bytes) -> bytes:
    """A mutation of a valid encoding, or arbitrary bytes."""
    kind = data.draw(st.sampled_from(["flip", "cut", "splice", "random"]))
    if kind == "random" or not valid:
        return data.draw(st.binary(max_size=512))
    if kind == "flip":
        i = data.draw(st.integers(0, len(valid) - 1))
        return valid[:i] + bytes([valid[i] ^ (1 << data.draw(st.integers(0, 7)))]) + valid[i + 1:]
    if kind == "cut":
        return valid[: data.draw(st.integers(0, len(valid) - 1))]
    i = data.draw(st.integers(0, len(valid)))
    return valid[:i] + data.draw(st.binary(min_size=1, max_size=40)) + valid[i:]


def _parse(cls, raw: bytes):
    try:
        return cls.FromString(raw)
    except DecodeError:
        return None  # the transport answers INVALID_ARGUMENT before any securefed code runs


# ---- server -> client ---------------------------------------------------------------------------

_TO_CLIENT = {
    Stage.SHARE_KEYS: (spb.KeyBroadcast, lambda m, sid, me: wire.key_broadcast_from_pb(m, IDS),
                       lambda msg: wire.key_broadcast_to_pb(msg, IDS)),
    Stage.MASKED_INPUT: (spb.ShareDelivery, lambda m, sid, me: wire.share_delivery_from_pb(m, sid, me, IDS),
                         lambda msg: wire.share_delivery_to_pb(msg, IDS)),
    Stage.CONSISTENCY: (spb.SurvivorList, lambda m, sid, me: wire.survivors_from_pb(m, sid, IDS),
                        lambda msg: wire.survivors_to_pb(msg, IDS)),
    Stage.UNMASK: (spb.UnmaskRequest, lambda m, sid, me: wire.unmask_request_from_pb(m, sid, IDS),
                   lambda msg: wire.unmask_request_to_pb(msg, IDS)),
}


@_FUZZ
@given(data=st.data(), stage=st.sampled_from(sorted(_TO_CLIENT)))
def test_fuzzed_server_messages_reach_the_client_only_as_typed_errors(rounds, data, stage):
    rnd = _copy(rounds[stage])
    me = data.draw(st.integers(1, N))
    cls, decode, encode = _TO_CLIENT[stage]
    valid = encode(rnd.outbox[me]).SerializeToString()
    m = _parse(cls, _fuzz_bytes(data, valid))
    if m is None:
        return
    sid = rnd.outbox[me].session_id
    client = rnd.clients[me]
    try:
        client.handle(decode(m, sid, me))
    except SecureFedError:
        assert client.revealed == {} or stage is Stage.UNMASK
        return


def test_the_fuzz_harness_accepts_the_unmodified_messages(rounds):
    # Control: the honest encodings go through the same path and are accepted at every stage.
    for stage, (cls, decode, encode) in _TO_CLIENT.items():
        rnd = _copy(rounds[stage])
        for me, msg in rnd.outbox.items():
            m = cls.FromString(encode(msg).SerializeToString())
            assert rnd.clients[me].handle(decode(m, msg.session_id, me)) is not None


# ---- client -> server ---------------------------------------------------------------------------


def _client_reply(rnd: SimulatedRound, stage: Stage, cid: int):
    return rnd.clients[cid].handle(rnd.outbox[cid])


def _valid_wire(stage: Stage, reply) -> bytes:
    if stage is Stage.ADVERTISE_KEYS:
        return wire.advertise_to_pb(reply, IDS).SerializeToString()
    if stage is Stage.SHARE_KEYS:
        return wire.share_keys_to_pb(reply, IDS).SerializeToString()
    if stage is Stage.MASKED_INPUT:
        return wire.masked_to_bytes(reply)[1]
    if stage is Stage.CONSISTENCY:
        return wire.consistency_to_pb(reply, IDS).SerializeToString()
    return wire.unmask_to_pb(reply, IDS).SerializeToString()


def _decode_client(stage: Stage, raw: bytes, sid: bytes, cid: int, ring_bits: int, signature: bytes = b""):
    if stage is Stage.MASKED_INPUT:
        return wire.masked_from_bytes(raw, ring_bits, D, sid, cid, signature)
    cls, fn = {
        Stage.ADVERTISE_KEYS: (spb.AdvertiseKeys, wire.advertise_from_pb),
        Stage.SHARE_KEYS: (spb.ShareKeys, wire.share_keys_from_pb),
        Stage.CONSISTENCY: (spb.ConsistencySignature, wire.consistency_from_pb),
        Stage.UNMASK: (spb.UnmaskResponse, wire.unmask_from_pb),
    }[stage]
    m = _parse(cls, raw)
    return None if m is None else fn(m, sid, IDS)


@_FUZZ
@given(data=st.data(), stage=st.sampled_from(list(Stage)))
def test_fuzzed_client_messages_are_refused_without_harming_the_round(rounds, data, stage):
    rnd = _copy(rounds[stage])
    attacker = data.draw(st.integers(1, N))
    reply = _client_reply(rnd, stage, attacker)
    sid = reply.session_id
    ring_bits = data.draw(st.sampled_from([32, 64, 32]))
    raw = _fuzz_bytes(data, _valid_wire(stage, reply))
    accepted = False
    try:
        msg = _decode_client(stage, raw, sid, attacker, ring_bits, getattr(reply, "signature", b""))
        if msg is not None:
            rnd.server.receive(msg)
            accepted = True
    except SecureFedError as exc:
        assert isinstance(exc, InvalidMessage), type(exc)
    # Whatever happened to the attacker's message, everyone else answers honestly.
    for cid in sorted(rnd.outbox):
        if cid != attacker:
            rnd.server.receive(_client_reply(rnd, stage, cid))
    try:
        rnd.outbox = rnd.server.close_stage()
        rnd.next_stage = Stage(stage + 1) if stage < Stage.UNMASK else None
        rnd.run(on_client_abort=OnClientAbort.DROP)  # a client refusing a bad share just drops out
    except SecureFedError:
        # Only an accepted, altered message (e.g. a corrupted unmask share, caught by the consistency
        # check on the extra share) can make the round abort: a denial of service, never a wrong sum.
        assert accepted
        assert rnd.server.stage.name == "ABORTED"
        return
    result = rnd.server.result
    if not accepted:
        # Refused: the round went on as if the attacker had dropped; the sum is exact.
        assert np.allclose(result.values, sum(INPUTS[c] for c in result.survivors), atol=N * 2 ** -8)
    # (An accepted altered masked vector is poisoning: secure aggregation does not prevent it.)


# ---- chunked payloads and plans ---------------------------------------------------------------------


@_FUZZ
@given(chunks=st.lists(st.tuples(st.integers(0, 1 << 40), st.binary(max_size=64)), max_size=6),
       sizes=st.lists(st.integers(0, 1 << 40), min_size=1, max_size=4), digest=st.binary(min_size=32, max_size=32))
def test_chunk_reassembly_is_bounded_and_typed(chunks, sizes, digest):
    try:
        recv = PartsReceiver(sizes, digest, max_bytes=4096)
    except InvalidMessage:
        return
    for offset, data in chunks:
        try:
            recv.write(offset, data)
        except InvalidMessage:
            break
        assert recv.committed <= 4096 and sum(len(p) for p in recv._parts) <= 4096  # within the bound given
    if not recv.complete:
        with pytest.raises(InvalidMessage):
            recv.parts()


def test_a_payload_declared_larger_than_the_bound_is_refused_before_buffering():
    with pytest.raises(InvalidMessage, match="exceeds"):
        PartsReceiver([(1 << 20) + 1], bytes(32), max_bytes=1 << 20)
    recv = PartsReceiver([5000], bytes(32), max_bytes=1 << 20)  # the wrong digest for these bytes
    for off in range(0, 4096, 1024):
        recv.write(off, b"y" * 1024)
    with pytest.raises(InvalidMessage, match="digest"):
        recv.write(4096, b"y" * 904)


@_FUZZ
@given(raw=st.binary(max_size=400))
def test_a_fuzzed_round_plan_is_refused_or_verified(raw):
    from securefed.protocol.plan import verify_plan

    plan = _parse(pb.RoundPlan, raw)
    if plan is None:
        return
    try:
        verify_plan(plan)
    except InvalidMessage:
        return
    pytest.fail("random bytes verified as a round plan (its digest should not match)")


@pytest.mark.parametrize(
    "change",
    [dict(vector_length=0), dict(vector_length=2**40), dict(ring_bits=7), dict(threshold=0), dict(threshold=99),
     dict(clip=float("nan")), dict(clip=float("inf")), dict(clip=-1.0), dict(frac_bits=63), dict(neighbour_degree=3)],
)
def test_a_round_setup_with_out_of_range_parameters_is_refused(rounds, change):
    from securefed.secagg.client import setup_digest

    rnd = _copy(rounds[Stage.ADVERTISE_KEYS])
    bad = dataclasses.replace(rnd.outbox[1], **change)
    try:
        bad = dataclasses.replace(bad, session_id=setup_digest(bad))
    except (SecureFedError, ValueError, OverflowError, TypeError):
        pass  # the digest itself refuses some values; the client must then refuse the message as well
    with pytest.raises(SecureFedError):
        rnd.clients[1].handle(bad)


# ---- explicit range checks: NaN/Inf, shapes, ring, field and index ranges -------------------------


def _unmask_reply(rounds, mutate):
    from securefed.crypto.shamir import PRIME, SHARE_SIZE

    rnd = _copy(rounds[Stage.UNMASK])
    reply = _client_reply(rnd, Stage.UNMASK, 1)
    share = reply.self_mask_shares[0]
    raw = mutate(share.share, PRIME, SHARE_SIZE)
    return rnd, dataclasses.replace(reply, self_mask_shares=(dataclasses.replace(share, share=raw),
                                                             *reply.self_mask_shares[1:]))


@pytest.mark.parametrize(
    "name, mutate",
    [
        ("y outside the field", lambda s, p, n: s[:8] + p.to_bytes(n - 8, "big")),
        ("x = 0", lambda s, p, n: (0).to_bytes(8, "big") + s[8:]),
        ("x beyond the holders", lambda s, p, n: (99).to_bytes(8, "big") + s[8:]),
        ("truncated", lambda s, p, n: s[:-1]),
    ],
)
def test_an_unmask_share_out_of_range_is_refused(rounds, name, mutate):
    rnd, bad = _unmask_reply(rounds, mutate)
    with pytest.raises(InvalidMessage):
        rnd.server.receive(bad)


def test_an_unmask_share_for_an_owner_outside_the_cohort_is_refused(rounds):
    rnd = _copy(rounds[Stage.UNMASK])
    reply = _client_reply(rnd, Stage.UNMASK, 1)
    share = reply.self_mask_shares[0]
    bad = dataclasses.replace(reply, self_mask_shares=(dataclasses.replace(share, owner=77), *reply.self_mask_shares[1:]))
    with pytest.raises(InvalidMessage):
        rnd.server.receive(bad)


@pytest.mark.parametrize(
    "masked",
    [np.zeros(D, dtype=np.uint64), np.zeros(D + 1, dtype=np.uint32), np.zeros((2, D // 2), dtype=np.uint32),
     np.zeros(D, dtype=np.int32), np.zeros(D, dtype=np.float32)],
    ids=["ring-64-in-ring-32", "wrong-length", "2-d", "signed", "float"],
)
def test_a_masked_input_outside_the_ring_or_of_the_wrong_shape_is_refused(rounds, masked):
    rnd = _copy(rounds[Stage.MASKED_INPUT])
    reply = _client_reply(rnd, Stage.MASKED_INPUT, 2)
    with pytest.raises(InvalidMessage):
        rnd.server.receive(dataclasses.replace(reply, masked=masked))
    with pytest.raises(InvalidMessage):
        wire.masked_from_bytes(b"\0" * (4 * D + 2), 32, D, reply.session_id, 2, reply.signature)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_updates_are_refused_before_anything_is_sent(bad):
    from securefed import he
    from securefed.crypto.fixedpoint import encode
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.errors import InvalidInput
    from securefed.secagg import SecAggClient

    x = np.ones(D)
    x[3] = bad
    with pytest.raises(InvalidInput):
        SecAggClient(1, IdentityKeyPair.generate(), max_colluders=NO_COLLUDERS).set_input(x)
    with pytest.raises(InvalidInput):
        encode(x, PARAMS.fixed_point())
    with pytest.raises(InvalidInput):
        he.generate_client_context().encrypt(x)


# ---- the global bundle (server -> member) ---------------------------------------------------------------

_LAYOUT = AdapterLayout(names=("a.lora_A", "a.lora_B"), shapes=((2, 3), (3, 2)), dtypes=("float32", "float32"))
_SETTINGS = {"lora": LoraSettings(rank=2, alpha=4.0).model_dump(mode="json"),
             "strategy": StrategySettings().model_dump(mode="json")}


def _bundle(settings_json: str, vec: np.ndarray | None = None, state: np.ndarray | None = None) -> bytes:
    vec = np.linspace(-0.5, 0.5, _LAYOUT.total_size, dtype=np.float32) if vec is None else vec
    tensors = {TENSOR_NAME: np.ascontiguousarray(vec, dtype=np.float32)}
    if state is not None:
        tensors[STATE_TENSOR] = np.ascontiguousarray(state, dtype=np.float32)
    digest = adapter_digest(tensors[TENSOR_NAME], _LAYOUT.to_json(), settings_json, state)
    return st_save(tensors, metadata={"layout": _LAYOUT.to_json(), "settings": settings_json, "digest": digest})


def test_the_bundle_fuzz_harness_accepts_the_unmodified_bundle():
    fs = federation_settings(decode_global(_bundle(json.dumps(_SETTINGS))))
    assert fs.lora.rank == 2 and fs.strategy.payload_size >= _LAYOUT.total_size


@_FUZZ
@given(data=st.data())
def test_fuzzed_global_bundles_reach_the_member_only_as_typed_errors(data):
    raw = _fuzz_bytes(data, _bundle(json.dumps(_SETTINGS)))
    try:
        federation_settings(decode_global(raw))
    except SecureFedError as exc:
        assert isinstance(exc, InvalidMessage), type(exc)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                     max_leaves=20)


@_FUZZ
@given(data=st.data())
def test_fuzzed_federation_settings_and_values_reach_the_member_only_as_typed_errors(data):
    """Settings the server signs into a well-framed bundle (its digest is right), with any JSON in any
    field, any adapter values and any server state: only ``InvalidMessage``, a ``SecurityAlert`` for a key
    the member does not know (refused, never ignored), or a valid result."""
    settings = copy.deepcopy(_SETTINGS)
    for _ in range(data.draw(st.integers(0, 3))):
        section = data.draw(st.sampled_from(["lora", "strategy", None]))
        value = data.draw(_JSON)
        if section is None:
            settings[data.draw(st.sampled_from(["lora", "strategy", "x"]))] = value
        elif isinstance(settings.get(section), dict):
            settings[section][data.draw(st.sampled_from([*settings[section], "extra"]))] = value
    text = data.draw(st.sampled_from([json.dumps(settings), json.dumps(settings)[:-1], "[" * 3000]))
    vec = data.draw(st.sampled_from([None, np.full(_LAYOUT.total_size, 3e38, np.float32),
                                     np.full(_LAYOUT.total_size, np.nan, np.float32), np.zeros(4, np.float32)]))
    state = data.draw(st.sampled_from([None, np.zeros(_LAYOUT.total_size, np.float32), np.zeros(3, np.float32)]))
    try:
        fs = federation_settings(decode_global(_bundle(text, vec, state)))
    except SecureFedError as exc:
        assert isinstance(exc, (InvalidMessage, SecurityAlert)), type(exc)
        return
    assert fs.strategy.payload_size >= _LAYOUT.total_size
