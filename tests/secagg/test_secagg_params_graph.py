"""Parameter refusals, the neighbour graph, and the session id's bindings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.config import parse_model
from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import ConfigError, InsecureParameters, InvalidInput, InvalidMessage
from securefed.secagg import (
    AdvertisedKeys,
    CohortMember,
    NeighbourGraph,
    SecAggParams,
    SecAggServer,
    suggest_neighbour_degree,
    suggest_params,
    suggest_threshold,
)
from securefed.secagg.messages import KeyBroadcast, MaskedInput, RevealedShare, RoundSetup, Stage, UnmaskResponse
from securefed.secagg.session import permutation, plan_digest, session_id


def test_threshold_must_be_a_majority_without_colluders() -> None:
    with pytest.raises(InsecureParameters, match="not a strict majority.*set threshold >= 6"):
        SecAggParams(threshold=5).check_cohort(10, max_colluders=0)
    SecAggParams(threshold=6).check_cohort(10, max_colluders=0)
    with pytest.raises(InsecureParameters, match="set threshold >= 3"):
        SecAggParams(threshold=2, neighbour_degree=4).check_cohort(50, max_colluders=0)  # m = 5
    with pytest.raises(InsecureParameters, match="exceeds the 5 share holders"):
        SecAggParams(threshold=6, neighbour_degree=4).check_cohort(50, max_colluders=0)


@pytest.mark.parametrize(("n", "k", "c", "least"), [
    (5, None, 1, 4),  # the complete graph: t = 3 of 5 falls to one colluder
    (10, None, 1, 6), (10, None, 2, 7),  # clients/server.toml: t = 6 of 10 falls to two
    (16, 12, 2, 8), (16, 12, 3, 9),  # SecAgg+ n = 16, k = 12 (m = 13): t = 7 falls to two or three
    (100, 20, 1, 12), (3, None, 1, 3),
])
def test_the_colluder_bound_2t_at_least_m_plus_c_plus_1(n, k, c, least) -> None:
    """Each (n, k, c) refuses exactly the thresholds below ceil((m + c + 1) / 2), naming the smallest safe one."""
    m = (n if k is None else k + 1)
    assert least == -(-(m + c + 1) // 2) == suggest_threshold(n, k, max_colluders=c)
    SecAggParams(threshold=least, neighbour_degree=k).check_cohort(n, max_colluders=c)
    for t in range(2, least):
        with pytest.raises(InsecureParameters, match=f"max_colluding_members = {c}.*set threshold >= {least}"):
            SecAggParams(threshold=t, neighbour_degree=k).check_cohort(n, max_colluders=c)
    # Dropout tolerance follows: at most (m - c - 1) / 2.
    assert SecAggParams(threshold=least, neighbour_degree=k).dropout_tolerance(n) == (m - c - 1) // 2


def test_the_default_assumes_one_colluder_and_too_few_holders_are_refused() -> None:
    with pytest.raises(InsecureParameters, match="max_colluding_members = 1"):
        SecAggParams(threshold=3).check_cohort(5)  # the default is one colluder
    with pytest.raises(InsecureParameters, match="too few"):
        SecAggParams(threshold=3).check_cohort(3, max_colluders=3)  # 3 holders, all of them possibly colluding
    SecAggParams(threshold=3).check_cohort(3, max_colluders=2)  # t = m: the victim's own share is always needed
    with pytest.raises(InsecureParameters, match="max_colluders"):
        SecAggParams(threshold=3).check_cohort(5, max_colluders=-1)
    with pytest.raises(InsecureParameters, match="cannot protect"):
        suggest_threshold(3, max_colluders=3)


def test_too_few_clients_and_overflow_refused() -> None:
    with pytest.raises(InsecureParameters, match="at least 3 clients"):
        SecAggParams(threshold=2).check_cohort(2)
    with pytest.raises(InsecureParameters, match="ring_bits=64|frac_bits"):
        SecAggParams(threshold=51, frac_bits=24, clip=10.0, ring_bits=32).check_cohort(100)
    SecAggParams(threshold=51, frac_bits=24, clip=10.0, ring_bits=64).check_cohort(100)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="neighbour_degree.*even"):
        parse_model(SecAggParams, {"threshold": 3, "neighbour_degree": 5}, "plan.toml")
    with pytest.raises(ConfigError, match="threshold"):
        parse_model(SecAggParams, {"threshold": 1}, "plan.toml")
    with pytest.raises(ConfigError, match="ring_bits"):
        parse_model(SecAggParams, {"threshold": 3, "ring_bits": 16}, "plan.toml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_model(SecAggParams, {"threshold": 3, "treshold": 3}, "plan.toml")


@pytest.mark.parametrize("n", [3, 4, 10, 50, 100, 1000, 10_000])
@pytest.mark.parametrize("c", [0, 1, 2])
def test_suggestions_are_safe(n: int, c: int) -> None:
    params = suggest_params(n, max_colluders=c)
    k = params.effective_degree(n)
    assert k % 2 == 0 or k == n - 1
    m = k + 1
    assert params.threshold == (m + c + 2) // 2 and 2 * params.threshold >= m + c + 1
    assert params.dropout_tolerance(n) == m - params.threshold == (m - c - 1) // 2
    if n >= 100:
        assert k < n - 1 and k <= 3 * n.bit_length() + 2  # O(log n)
    assert suggest_neighbour_degree(100) == 20 and suggest_threshold(100, 20, max_colluders=0) == 11
    assert suggest_threshold(100, 20) == 12  # the default assumes one colluder


def _ids(draw_n: int) -> list[int]:
    return [i * 7 + 3 for i in range(draw_n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 60), k_half=st.integers(1, 10), sid=st.binary(min_size=32, max_size=32))
def test_graph_is_regular_symmetric_and_deterministic(n: int, k_half: int, sid: bytes) -> None:
    ids = _ids(n)
    k = min(2 * k_half, n - 1)
    g = NeighbourGraph.build(sid, ids, k)
    expect = n - 1 if k >= n - 1 else k
    for u in ids:
        assert len(g.of(u)) == expect and u not in g.of(u)
        assert all(u in g.of(v) for v in g.of(u))
        holders = g.holders(u)
        assert [g.share_x(u, h) for h in holders] == list(range(1, len(holders) + 1))
    assert NeighbourGraph.build(sid, list(reversed(ids)), k) == g


def test_graph_depends_on_session_id_and_permutation_is_a_permutation() -> None:
    ids = _ids(40)
    p1, p2 = permutation(b"\x01" * 32, ids), permutation(b"\x02" * 32, ids)
    assert sorted(p1) == ids and sorted(p2) == ids and p1 != p2
    assert NeighbourGraph.build(b"\x01" * 32, ids, 6) != NeighbourGraph.build(b"\x02" * 32, ids, 6)
    assert permutation(b"\x01" * 32, ids) == p1  # deterministic (hash-driven, no RNG state)


_PINNED_PERMUTATION = [6, 1, 4, 7, 2, 8, 3, 5]


def test_graph_known_answer() -> None:
    """Pinned output: the graph is part of the protocol, so an accidental change must show up."""
    g = NeighbourGraph.build(bytes(range(32)), list(range(1, 9)), 2)
    assert permutation(bytes(range(32)), list(range(1, 9))) == _PINNED_PERMUTATION
    order = _PINNED_PERMUTATION
    for p, u in enumerate(order):
        assert g.of(u) == {order[(p - 1) % 8], order[(p + 1) % 8]}



def _setup_kwargs():
    cohort = tuple(CohortMember(i, bytes([i]) * 32) for i in range(1, 5))
    return dict(round_id=3, plan=b"plan", model_hash=b"\x11" * 32, vector_length=10, threshold=3,
                neighbour_degree=0, ring_bits=32, frac_bits=16, clip=1.0, cohort=cohort)


@pytest.mark.parametrize(("field", "value"), [
    ("round_id", 4), ("plan", b"plan2"), ("model_hash", b"\x12" * 32), ("vector_length", 11), ("threshold", 4),
    ("neighbour_degree", 2), ("ring_bits", 64), ("frac_bits", 15), ("clip", 2.0),
    ("cohort", tuple(CohortMember(i, bytes([i + 1]) * 32) for i in range(1, 5))),
])
def test_plan_digest_binds_every_field(field: str, value) -> None:
    base = _setup_kwargs()
    assert plan_digest(**base) != plan_digest(**{**base, field: value})
    assert plan_digest(**base) == plan_digest(**{**base, "cohort": tuple(reversed(base["cohort"]))})


def test_session_id_binds_every_key() -> None:
    digest = plan_digest(**_setup_kwargs())
    keys = [AdvertisedKeys(i, bytes([i]) * 32, bytes([i + 100]) * 32, bytes(64)) for i in range(1, 5)]
    sid = session_id(digest, keys)
    assert session_id(digest, list(reversed(keys))) == sid
    assert session_id(b"\x00" * 32, keys) != sid
    for i in range(4):
        for fld in ("c_pk", "s_pk"):
            changed = list(keys)
            changed[i] = dataclasses.replace(keys[i], **{fld: b"\xee" * 32})
            assert session_id(digest, changed) != sid
    assert session_id(digest, keys[:3]) != sid


def test_message_validation_rejects_bad_sizes() -> None:
    sid = b"\x00" * 32
    with pytest.raises(InvalidMessage, match="session_id"):
        KeyBroadcast(b"short", Stage.SHARE_KEYS, ()).validate()
    with pytest.raises(InvalidMessage, match="stage"):
        KeyBroadcast(sid, Stage.UNMASK, ()).validate()
    with pytest.raises(InvalidMessage, match="c_pk"):
        KeyBroadcast(sid, Stage.SHARE_KEYS, (AdvertisedKeys(1, b"x", bytes(32), bytes(64)),)).validate()
    with pytest.raises(InvalidMessage, match="sorted"):
        k = AdvertisedKeys(1, bytes(32), bytes(32), bytes(64))
        KeyBroadcast(sid, Stage.SHARE_KEYS, (k, k)).validate()
    with pytest.raises(InvalidMessage, match="uint32 or uint64"):
        MaskedInput(sid, Stage.MASKED_INPUT, 1, np.zeros(3, np.float32), bytes(64)).validate()
    with pytest.raises(InvalidMessage, match="integer"):
        MaskedInput(sid, Stage.MASKED_INPUT, -1, np.zeros(3, np.uint32), bytes(64)).validate()
    with pytest.raises(InvalidMessage, match="masked-with signature"):
        MaskedInput(sid, Stage.MASKED_INPUT, 1, np.zeros(3, np.uint32), b"short").validate()
    with pytest.raises(InvalidMessage, match="both"):
        r = RevealedShare(2, bytes(74))
        UnmaskResponse(sid, Stage.UNMASK, 1, (r,), (r,)).validate()
    kw = _setup_kwargs()
    with pytest.raises(InvalidMessage, match="ring_bits"):
        RoundSetup(session_id=sid, stage=Stage.ADVERTISE_KEYS, **{**kw, "ring_bits": 16}).validate()
    with pytest.raises(InvalidMessage, match="clip"):
        RoundSetup(session_id=sid, stage=Stage.ADVERTISE_KEYS, **{**kw, "clip": float("nan")}).validate()


def test_server_refuses_bad_cohort() -> None:
    key = IdentityKeyPair.generate().public_bytes()
    with pytest.raises(InvalidInput, match="identity key"):
        SecAggServer(SecAggParams(threshold=3), round_id=1, vector_length=4, cohort={1: key, 2: key, 3: b"\x01" * 32})
    with pytest.raises(InsecureParameters):
        SecAggServer(SecAggParams(threshold=2), round_id=1, vector_length=4, cohort={i: bytes([i]) * 32 for i in range(1, 6)})
