"""The shared protocol vocabulary: the plan digest binds every field; the secagg wire conversions are lossless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from securefed import secagg as sa
from securefed.errors import InvalidMessage
from securefed.protocol.plan import cohort_ids, plan_bytes, seal_plan, verify_plan
from securefed.transport._generated import federation_pb2 as pb

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

KIT = Path(__file__).resolve().parents[2] / "clients"


def _plan(**kw) -> pb.RoundPlan:
    plan = pb.RoundPlan(round=7, global_adapter_sha256=b"\x01" * 32, mode=pb.AGGREGATION_MODE_SECAGG, vector_length=10,
                        cohort=[pb.CohortMember(client_id=n, identity_public_key=bytes([i]) * 32)
                                for i, n in enumerate(["a", "b", "c"], 1)],
                        secagg=pb.SecAggParams(threshold=2, ring_bits=64, frac_bits=32, clip=1.0))
    for k, v in kw.items():
        setattr(plan, k, v)
    return seal_plan(plan)


def test_plan_digest_binds_every_field():
    plan = _plan()
    verify_plan(plan)
    for field, value in (("round", 8), ("vector_length", 11), ("stage_timeout_ms", 5)):
        other = pb.RoundPlan()
        other.CopyFrom(plan)
        setattr(other, field, value)
        with pytest.raises(InvalidMessage, match="digest"):
            verify_plan(other)
    other = pb.RoundPlan()
    other.CopyFrom(plan)
    other.cohort[1].identity_public_key = b"\x09" * 32
    with pytest.raises(InvalidMessage):
        verify_plan(other)
    ids = cohort_ids(plan)
    assert ids.by_name == {"a": 1, "b": 2, "c": 3} and ids.name_of(2) == "b"
    with pytest.raises(InvalidMessage):
        ids.int_of("mallory")


def test_secagg_round_through_the_wire_conversions():
    """Every message crosses proto form both ways; the sum is still exact (conversions are lossless)."""
    from securefed.crypto.keys import IdentityKeyPair
    from securefed.protocol import secagg_wire as wire
    from securefed.secagg.client import setup_digest

    names = ["a", "b", "c"]
    idk = {n: IdentityKeyPair.generate() for n in names}
    plan = pb.RoundPlan(round=3, global_adapter_sha256=b"\x02" * 32, mode=pb.AGGREGATION_MODE_SECAGG, vector_length=5,
                        cohort=[pb.CohortMember(client_id=n, identity_public_key=idk[n].public_bytes()) for n in names],
                        secagg=pb.SecAggParams(threshold=2, neighbours=0, ring_bits=64, frac_bits=32, clip=1.0))
    seal_plan(plan)
    ids = cohort_ids(plan)
    params = sa.SecAggParams(threshold=2, ring_bits=64, frac_bits=32, clip=1.0)
    server = sa.SecAggServer(params, round_id=3, vector_length=5, cohort={ids.int_of(n): idk[n].public_bytes() for n in names},
                             plan=plan_bytes(plan), model_hash=b"\x02" * 32, max_colluders=NO_COLLUDERS)
    server.start()
    inputs = {n: np.array([0.1, -0.2, 0.3, 0.0, 0.3]) * (i + 1) for i, n in enumerate(names)}  # within clip
    clients = {}
    setup0 = wire.round_setup(plan, ids, b"\0" * 32)
    setup = sa.RoundSetup(**{**setup0.__dict__, "session_id": setup_digest(setup0)})
    assert setup.session_id == server.plan_digest
    for n in names:
        c = sa.SecAggClient(ids.int_of(n), idk[n], max_colluders=NO_COLLUDERS)
        c.set_input(inputs[n])
        adv = c.handle(setup)
        server.receive(wire.advertise_from_pb(wire.advertise_to_pb(adv, ids), adv.session_id, ids))
        clients[n] = c
    out = server.close_stage()
    for n in names:
        kb = wire.key_broadcast_from_pb(wire.key_broadcast_to_pb(out[ids.int_of(n)], ids), ids)
        r = clients[n].handle(kb)
        server.receive(wire.share_keys_from_pb(wire.share_keys_to_pb(r, ids), r.session_id, ids))
    out = server.close_stage()
    sid = server.session_id
    for n in names:
        sd = wire.share_delivery_from_pb(wire.share_delivery_to_pb(out[ids.int_of(n)], ids), sid, ids.int_of(n), ids)
        m = clients[n].handle(sd)
        bits, data = wire.masked_to_bytes(m)
        sig = wire.masked_with_to_pb(m, ids)
        assert sig.client_id == n
        server.receive(wire.masked_from_bytes(data, bits, 5, sid, ids.int_of(n), sig.signature))
    out = server.close_stage()
    for n in names:
        r = clients[n].handle(wire.survivors_from_pb(wire.survivors_to_pb(out[ids.int_of(n)], ids), sid, ids))
        server.receive(wire.consistency_from_pb(wire.consistency_to_pb(r, ids), sid, ids))
    out = server.close_stage()
    for n in names:
        r = clients[n].handle(wire.unmask_request_from_pb(wire.unmask_request_to_pb(out[ids.int_of(n)], ids), sid, ids))
        server.receive(wire.unmask_from_pb(wire.unmask_to_pb(r, ids), sid, ids))
    server.close_stage()
    np.testing.assert_allclose(server.result.values, sum(inputs.values()), atol=3 * 2.0**-32)
    with pytest.raises(InvalidMessage, match="bytes"):
        wire.masked_from_bytes(b"\0" * 39, 64, 5, sid, 1, bytes(64))
