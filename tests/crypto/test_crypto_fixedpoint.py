"""securefed.crypto.fixedpoint: exact vectors, capacity refusal, sums of n clients, unbiased rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import json_parametrize
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from securefed import errors
from securefed.crypto import fixedpoint
from securefed.crypto.fixedpoint import FixedPointParams, _encode_with_rounding_key, decode_sum, encode
from securefed.crypto.prg import expand_mask
from securefed.errors import InsecureParameters, InvalidInput

DTYPES = {32: np.uint32, 64: np.uint64}


def _params(v: dict) -> FixedPointParams:
    return FixedPointParams(clip=v["clip"], frac_bits=v["frac_bits"], ring_bits=v["ring_bits"])


@json_parametrize("fixedpoint", "generate")
def test_encode_exactly_representable_values(vector):
    params = _params(vector)
    encoded, clipped = encode(np.array(vector["values"], dtype=np.float64), params)
    assert encoded.dtype == DTYPES[params.ring_bits]
    assert [str(int(x)) for x in encoded] == vector["encoded"]
    assert clipped == vector["clipped"]


@json_parametrize("fixedpoint", "verify")
def test_decode_sum_vectors(vector):
    params = _params(vector)
    summed = np.array([int(x) for x in vector["summed"]], dtype=DTYPES[params.ring_bits])
    decoded = decode_sum(summed, params, vector["n_summed"])
    assert decoded.dtype == np.float64
    assert decoded.tolist() == vector["decoded"]


@json_parametrize("fixedpoint", "invalid")
def test_check_capacity_refuses_with_a_hint(vector):
    params = _params(vector)
    with pytest.raises(getattr(errors, vector["error"])) as excinfo:
        params.check_capacity(vector["n_clients"], vector["weight_max"])
    message = str(excinfo.value)
    assert "\n" not in message
    for hint in vector["hint"]:
        assert hint in message
    # decode refuses too, so an ambiguous sum is never returned
    with pytest.raises(InsecureParameters):
        decode_sum(np.zeros(2, DTYPES[params.ring_bits]), params, vector["n_clients"], weight_max=vector["weight_max"])


@json_parametrize("fixedpoint", "invalid")
def test_suggested_frac_bits_really_fit(vector):
    """Following the message's advice must give parameters that pass."""
    message = ""
    try:
        _params(vector).check_capacity(vector["n_clients"], vector["weight_max"])
    except InsecureParameters as exc:
        message = str(exc)
    marker = "lower frac_bits to <= "
    if marker not in message:
        return
    suggested = int(message.split(marker)[1].split(",")[0].split(" ")[0])
    fixed = FixedPointParams(vector["clip"], suggested, vector["ring_bits"])
    fixed.check_capacity(vector["n_clients"], vector["weight_max"])
    with pytest.raises(InsecureParameters):  # and it is the largest such value
        FixedPointParams(vector["clip"], suggested + 1, vector["ring_bits"]).check_capacity(
            vector["n_clients"], vector["weight_max"]
        )


@st.composite
def capacity_ok(draw):
    """Parameters that pass check_capacity, half of them exactly at the boundary."""
    ring_bits = draw(st.sampled_from([32, 64]))
    n = draw(st.integers(1, 12))
    clip = draw(st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False))
    limit = 2 ** (ring_bits - 1) - 1
    f_max = 0
    def fits(f: int) -> bool:
        scaled = math.ceil(clip * 2**f)
        return f <= ring_bits - 2 and scaled <= 2**53 and n * scaled <= limit

    while fits(f_max + 1):
        f_max += 1
    assume(n * math.ceil(clip) <= limit)
    f = f_max if draw(st.booleans()) else draw(st.integers(0, f_max))
    params = FixedPointParams(clip, f, ring_bits)
    params.check_capacity(n)
    return params, n


@settings(max_examples=60, deadline=None)
@given(setup=capacity_ok(), data=st.data())
def test_sum_of_n_encodings_decodes_within_n_ulps(setup, data):
    params, n = setup
    d = data.draw(st.integers(1, 12))
    edge = st.sampled_from([params.clip, -params.clip, 0.0, 2 * params.clip, -3 * params.clip])
    value = st.one_of(edge, st.floats(-2 * params.clip, 2 * params.clip, allow_nan=False))
    vectors = [np.array(data.draw(st.lists(value, min_size=d, max_size=d))) for _ in range(n)]
    total = np.zeros(d, dtype=DTYPES[params.ring_bits])
    for v in vectors:
        encoded, clipped = encode(v, params)
        assert clipped == int(np.count_nonzero(np.abs(v) > params.clip))
        total += encoded  # ring arithmetic: wraps mod 2^ring_bits
    decoded = decode_sum(total, params, n)
    exact = np.sum([np.clip(v, -params.clip, params.clip) for v in vectors], axis=0)
    bound = n * 2.0**-params.frac_bits
    # float64 slack: decoded and exact are computed in floating point (relative error ~1e-15)
    slack = 1e-9 * max(1.0, float(np.max(np.abs(exact))))
    assert np.all(np.abs(decoded - exact) <= bound + slack)


@pytest.mark.parametrize(("ring_bits", "n"), [(32, 1), (32, 3), (32, 1000), (64, 7)])
def test_all_clients_at_the_clip_edge_never_overflow(ring_bits, n):
    clip = 1.0
    f = 0
    while n * math.ceil(clip * 2 ** (f + 1)) <= 2 ** (ring_bits - 1) - 1 and f + 1 <= 52:
        f += 1
    params = FixedPointParams(clip, f, ring_bits)
    params.check_capacity(n)
    for sign in (1.0, -1.0):
        enc, _ = encode(np.full(3, sign * 5.0), params)  # clipped to +-clip
        total = np.zeros(3, DTYPES[ring_bits])
        for _ in range(n):
            total += enc
        np.testing.assert_array_equal(decode_sum(total, params, n), np.full(3, sign * n * clip))


def test_stochastic_rounding_is_unbiased():
    params = FixedPointParams(1.0, 8, 32)
    target = 0.3 * 2**-8  # 0.3 of one unit: rounds up with probability 0.3
    encoded, _ = encode(np.full(40_000, target), params)
    ups = np.count_nonzero(encoded == 1)
    assert np.count_nonzero((encoded != 0) & (encoded != 1)) == 0
    sd = math.sqrt(40_000 * 0.3 * 0.7)
    assert abs(ups - 12_000) < 6 * sd
    negative, _ = encode(np.full(40_000, -target), params)  # -0.3 units: -1 w.p. 0.3, else 0
    assert abs(np.count_nonzero(negative == np.uint32(2**32 - 1)) - 12_000) < 6 * sd


def test_rounding_randomness_is_fresh_and_from_the_keyed_stream():
    params = FixedPointParams(1.0, 4, 64)
    values = np.full(256, 0.5 * 2**-4)
    a, _ = encode(values, params)
    b, _ = encode(values, params)
    assert not np.array_equal(a, b)
    key = bytes(range(32))
    c, _ = _encode_with_rounding_key(values, params, key)
    # Independent recomputation: R = 32 here (bitlen(16) = 5), so 0.5 units scale to t = 2^31 and
    # the value rounds up iff the 32-bit keystream word r satisfies 2^31 + r >= 2^32.
    assert fixedpoint.rounding_bits(params) == 32
    words = [int(w) for w in expand_mask(key, 256, 32)]
    expected = [1 if w >= 2**31 else 0 for w in words]
    assert [int(x) for x in c] == expected


@pytest.mark.parametrize(("clip", "frac_bits", "ring_bits", "want"),
                         [(1.0, 16, 32, 32), (1.0, 24, 32, 32), (1.0, 32, 64, 29), (1.0, 52, 64, 9), (2.0**53, 0, 64, 8)])
def test_rounding_bits_fit_an_int64_with_the_random_addend(clip, frac_bits, ring_bits, want):
    params = FixedPointParams(clip, frac_bits, ring_bits)
    r = fixedpoint.rounding_bits(params)
    assert r == want
    assert params.max_abs_encoded * 2**r + 2**r < 2**63  # t + r never overflows int64


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), ring_bits=st.sampled_from([32, 64]), workers=st.integers(1, 4),
       n=st.integers(0, 3000), nmasks=st.integers(0, 4))
def test_encode_masked_is_encode_plus_masks_for_any_worker_count(key, ring_bits, workers, n, nmasks):
    params = FixedPointParams(1.0, 12, ring_bits)
    values = np.linspace(-1.5, 1.5, n)
    masks = [(bytes([i]) * 32, 1 if i % 2 else -1) for i in range(nmasks)]
    fused, clipped = fixedpoint.encode_masked(values, params, masks, workers=workers, rounding_key=key)
    plain, clipped_plain = _encode_with_rounding_key(values, params, key)
    for k, sign in masks:
        m = expand_mask(k, n, ring_bits)
        plain = plain + m if sign == 1 else plain - m
    np.testing.assert_array_equal(fused, plain)
    assert clipped == clipped_plain == int(np.count_nonzero(np.abs(values) > 1.0))


def test_encode_is_the_same_across_range_boundaries_and_workers():
    """Ranges start at block boundaries and seek the rounding stream: 1 or 3 workers agree."""
    from securefed.crypto import prg
    n = 3 * prg._MIN_WORDS_PER_WORKER + 12345
    values = np.sin(np.arange(n, dtype=np.float64))
    params = FixedPointParams(1.0, 20, 32)
    key = bytes(range(32))
    one, c1 = fixedpoint.encode_masked(values, params, workers=1, rounding_key=key)
    three, c3 = fixedpoint.encode_masked(values, params, workers=3, rounding_key=key)
    np.testing.assert_array_equal(one, three)
    assert c1 == c3 == 0
    assert np.max(np.abs(one.view(np.int32) / 2**20 - values)) <= 2**-20


def test_float32_and_integer_inputs_encode_like_float64():
    params = FixedPointParams(4.0, 10, 32)
    key = bytes(32)
    ref, _ = _encode_with_rounding_key(np.array([0.5, -1.25, 3.0, 9.0]), params, key)
    f32, _ = _encode_with_rounding_key(np.array([0.5, -1.25, 3.0, 9.0], dtype=np.float32), params, key)
    ints, clipped = _encode_with_rounding_key(np.array([0, -1, 3, 9]), params, key)
    np.testing.assert_array_equal(ref, f32)
    assert [int(v) for v in ints.view(np.int32)] == [0, -1024, 3072, 4096] and clipped == 1


def test_encode_never_touches_numpy_rng(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("numpy RNG used")

    for name in ("default_rng", "RandomState", "random", "rand", "uniform", "Generator"):
        monkeypatch.setattr(np.random, name, boom)
    encoded, _ = encode(np.linspace(-1, 1, 1001), FixedPointParams(1.0, 10, 32))
    assert encoded.shape == (1001,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_invalid_input(bad):
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        encode(np.array([0.0, 1.0, bad]), FixedPointParams(1.0, 8, 32))


@pytest.mark.parametrize("values", [np.array(["a"]), np.array([1 + 2j]), np.array([object()]), np.array([True])])
def test_non_real_values_are_invalid_input(values):
    with pytest.raises(InvalidInput):
        encode(values, FixedPointParams(1.0, 8, 32))


def test_encode_preserves_shape_and_does_not_modify_input():
    values = np.array([[0.25, -3.0], [2.0, 0.5]])
    before = values.copy()
    encoded, clipped = encode(values, FixedPointParams(1.0, 2, 64))
    assert encoded.shape == (2, 2) and clipped == 2
    np.testing.assert_array_equal(values, before)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip": 0.0},
        {"clip": -1.0},
        {"clip": float("nan")},
        {"clip": float("inf")},
        {"clip": "1"},
        {"clip": True},
        {"ring_bits": 16},
        {"ring_bits": 128},
        {"frac_bits": -1},
        {"frac_bits": 31},
        {"frac_bits": 2.5},
    ],
)
def test_params_validation(kwargs):
    args = {"clip": 1.0, "frac_bits": 8, "ring_bits": 32}
    args.update(kwargs)
    with pytest.raises(InsecureParameters):
        FixedPointParams(**args)


def test_decode_rejects_wrong_ring_dtype_and_counts():
    params = FixedPointParams(1.0, 8, 32)
    with pytest.raises(InvalidInput):
        decode_sum(np.zeros(3, np.uint64), params, 1)
    with pytest.raises(InvalidInput):
        decode_sum(np.zeros(3, np.int32), params, 1)
    with pytest.raises(InvalidInput):
        decode_sum(np.zeros(3, np.uint32), params, 0)
    with pytest.raises(InvalidInput):
        params.check_capacity(2, weight_max=0)


def test_weight_max_scales_the_bound():
    params = FixedPointParams(1.0, 16, 32)
    params.check_capacity(100, weight_max=300)  # 30000 * 2^16 < 2^31
    with pytest.raises(InsecureParameters, match="weight_max"):
        params.check_capacity(100, weight_max=400)


def test_max_abs_encoded_is_exact():
    assert FixedPointParams(0.1, 10, 32).max_abs_encoded == math.ceil(0.1 * 1024)
    assert fixedpoint.FLOAT_EXACT_BITS == 53
