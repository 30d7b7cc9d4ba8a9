"""CKKS aggregation (securefed.he): parameters, key material, chunking, sums, validation on receipt."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed import he
from securefed.errors import CryptoError, InsecureParameters, InvalidInput, InvalidMessage, ProtocolAbort
from securefed.he.params import MAX_COEFF_MODULUS_BITS_128, CkksParams

DEFAULT = he.get_params(he.DEFAULT_PARAMS_NAME)
N = DEFAULT.poly_modulus_degree
CHUNK = DEFAULT.chunk_size  # reals per ciphertext (two per complex slot)
SLOTS = DEFAULT.slot_count
# CKKS error of a sum of <= 100 fresh ciphertexts is < 1e-8 at scale 2^40; flooding adds
# N(0, flood_sigma^2) per value, so 7 sigma bounds the max over a few thousand values.
CKKS_ERR = 1e-8


def tol(params: CkksParams = DEFAULT) -> float:
    return 7 * params.flood_sigma + CKKS_ERR


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)  # not secret: test data


@pytest.fixture(scope="module")
def client() -> he.ClientContext:
    return he.generate_client_context(DEFAULT)


@pytest.fixture(scope="module")
def server_ctx(client) -> he.ServerContext:
    return he.ServerContext.from_public_bytes(client.public_bytes(), DEFAULT.name)


# --- parameter sets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(he.PARAMETER_SETS))
def test_named_sets_are_within_the_128_bit_bound(name):
    p = he.get_params(name)
    assert sum(p.coeff_mod_bit_sizes) <= MAX_COEFF_MODULUS_BITS_128[p.poly_modulus_degree]
    assert p.chunk_size == p.poly_modulus_degree == 2 * p.slot_count


@pytest.mark.parametrize(
    ("n", "bits"),
    [(4096, (60, 50)), (8192, (60, 60, 60, 39)), (16384, (59,) * 7 + (26,)), (32768, (60,) * 14 + (42,))],
)
def test_parameter_set_above_the_security_bound_is_refused(n, bits):
    assert sum(bits) == MAX_COEFF_MODULUS_BITS_128[n] + 1
    with pytest.raises(InsecureParameters, match="128-bit security bound"):
        CkksParams(
            name="weak", poly_modulus_degree=n, coeff_mod_bit_sizes=bits, global_scale_bits=40,
            max_abs_value=1.0, max_summands=10, flood_log2_sigma=10,
        )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("poly_modulus_degree", 2048, "no 128-bit security bound"),
        ("poly_modulus_degree", 65536, "no 128-bit security bound"),
        ("coeff_mod_bit_sizes", (56,), "special prime"),
        ("coeff_mod_bit_sizes", (56, 61), "bits"),
        ("max_summands", 1 << 20, "need"),
        ("max_abs_value", float("inf"), "max_abs_value"),
        ("flood_log2_sigma", 1, "flood_log2_sigma"),
        ("global_scale_bits", 10, "global_scale_bits"),
    ],
)
def test_unsafe_or_unknown_parameters_are_refused(field, value, match):
    kw = DEFAULT.model_dump()
    kw[field] = value
    with pytest.raises(InsecureParameters, match=match):
        CkksParams(**kw)


def test_unknown_set_name_is_refused_and_sets_are_frozen():
    with pytest.raises(InsecureParameters, match="unknown CKKS parameter set"):
        he.get_params("ckks-n1024-toy")
    with pytest.raises(InsecureParameters):
        he.generate_client_context("ckks-n1024-toy")
    with pytest.raises(Exception):
        DEFAULT.global_scale_bits = 20  # type: ignore[misc]


def test_importing_he_does_not_import_tenseal():
    code = "import sys, securefed.he as h; h.get_params(h.DEFAULT_PARAMS_NAME); assert 'tenseal' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- key material ---------------------------------------------------------------------------------


def test_server_context_holds_no_key_and_carries_no_evaluation_keys(client, server_ctx):
    public = client.public_bytes()
    assert len(public) < 1024  # parameters only: no public, relinearisation or Galois key
    raw = ts.context_from(public)
    assert raw.is_public() and not raw.has_secret_key()
    assert not raw.has_relin_keys() and not raw.has_galois_keys()
    assert server_ctx.params == DEFAULT


def test_server_context_with_secret_key_is_refused(client):
    with pytest.raises(CryptoError, match="secret key"):
        he.ServerContext.from_public_bytes(client.serialize_secret(), DEFAULT.name)


def test_server_context_with_evaluation_keys_is_refused():
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, N, coeff_mod_bit_sizes=list(DEFAULT.coeff_mod_bit_sizes))
    with pytest.raises(CryptoError):
        he.ServerContext.from_public_bytes(ctx.serialize(save_secret_key=False), DEFAULT.name)


def test_oversized_server_context_is_refused_before_parsing():
    with pytest.raises(CryptoError, match="too large"):
        he.ServerContext.from_public_bytes(b"\0" * (he.keys.MAX_PUBLIC_CONTEXT_BYTES + 1), DEFAULT.name)


@pytest.mark.parametrize("chain", [[50, 50], [56, 52], [40, 40]])
def test_client_context_deviating_from_pinned_parameters_is_refused(chain):
    other = ts.context(
        ts.SCHEME_TYPE.CKKS, N, coeff_mod_bit_sizes=chain, encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC
    )
    secret = other.serialize(save_secret_key=True, save_public_key=False, save_relin_keys=False)
    public = other.serialize(save_secret_key=False, save_public_key=False, save_relin_keys=False)
    with pytest.raises(CryptoError, match="pinned parameter set"):
        he.ClientContext.from_secret_bytes(secret, DEFAULT.name)
    with pytest.raises(CryptoError, match="pinned parameter set"):
        he.ServerContext.from_public_bytes(public, DEFAULT.name)


def test_context_of_the_other_named_set_is_refused(client):
    other = next(n for n in he.PARAMETER_SETS if n != DEFAULT.name)
    with pytest.raises(CryptoError, match="pinned parameter set"):
        he.ClientContext.from_secret_bytes(client.serialize_secret(), other)
    with pytest.raises(CryptoError, match="pinned parameter set"):
        he.ServerContext.from_public_bytes(client.public_bytes(), other)


def test_public_bytes_cannot_be_loaded_as_a_client_context(client):
    with pytest.raises(CryptoError, match="no secret key"):
        he.ClientContext.from_secret_bytes(client.public_bytes(), DEFAULT.name)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x0a\x05hello", bytes(200)])
def test_garbage_context_bytes_are_invalid_messages(data):
    with pytest.raises(InvalidMessage):
        he.ClientContext.from_secret_bytes(data, DEFAULT.name)
    with pytest.raises(InvalidMessage):
        he.ServerContext.from_public_bytes(data, DEFAULT.name)


def single(enc: he.EncryptedVector) -> he.EncryptedSum:
    """One contribution as a 'sum' (what a decryptor would be handed for it)."""
    return he.EncryptedSum(enc.params_name, enc.length, enc.c0, (enc.seeds,))


def summed(server_ctx, encs, length) -> he.EncryptedSum:
    agg = he.ServerAggregator(server_ctx, length)
    for i, e in enumerate(encs):
        agg.add(e, sender=f"org-{i}")
    return agg.result()


def test_secret_round_trip_decrypts_the_other_members_ciphertexts(client):
    member = he.ClientContext.from_secret_bytes(client.serialize_secret(), DEFAULT.name)
    x = rng(1).uniform(-1, 1, 100)
    assert np.max(np.abs(member.decrypt(single(client.encrypt(x))) - x)) < tol()
    assert member.members_key() == client.members_key()  # the tags' key comes from the shared secret


# --- chunking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [1, SLOTS - 1, SLOTS, SLOTS + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7],
)
def test_chunking_round_trip(client, length):
    x = rng(length).uniform(-DEFAULT.max_abs_value, DEFAULT.max_abs_value, length)
    enc = client.encrypt(x)
    count = -(-length // CHUNK)
    assert enc.length == length and len(enc.c0) == count * N * DEFAULT.coeff_bytes
    assert len(enc.seeds) == count * he.vector.SEED_RECORD_BYTES
    assert he.EncryptedVector.from_parts(DEFAULT, enc.c0, enc.seeds, length) == enc
    y = client.decrypt(single(enc))
    assert y.shape == (length,)
    assert np.max(np.abs(y - x)) < tol()


# --- encrypted sums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_clients", [1, 2, 10, 100])
def test_sum_of_encrypted_vectors_decrypts_to_the_plaintext_sum(client, server_ctx, n_clients):
    length = CHUNK + 123
    xs = [rng(100 + i).uniform(-1, 1, length) for i in range(n_clients)]
    total = summed(server_ctx, [client.encrypt(x) for x in xs], length)
    assert total.summands == n_clients
    expected = np.sum(xs, axis=0)
    err = float(np.max(np.abs(client.decrypt(total) - expected)))
    # The CKKS error alone (before flooding) is far below the flooding noise.
    raw_err = float(np.max(np.abs(client._decode_checked(total, None) - expected)))
    print(f"CKKS max abs error, {n_clients} clients, d={length}: {err:.3e} (bound {tol():.3e}), raw {raw_err:.3e}")
    assert err < tol()
    assert raw_err < CKKS_ERR


def test_decryption_flooding_has_the_documented_spread_and_members_draw_the_same(client):
    length = 4 * CHUNK
    x = rng(7).uniform(-1, 1, length)
    total = single(client.encrypt(x))
    a, b = client.decrypt(total), client.decrypt(total)
    assert not np.array_equal(a, b)  # without a key, each release gets fresh noise
    ratio = float(np.std(a - x)) / DEFAULT.flood_sigma
    assert 0.9 < ratio < 1.1
    member = he.ClientContext.from_secret_bytes(client.serialize_secret(), DEFAULT.name)
    k1, k2 = bytes([1]) * 32, bytes([2]) * 32
    # One attempt's key: every decryptor releases the same noisy value, so averaging gains nothing.
    np.testing.assert_array_equal(client.decrypt(total, noise_key=k1), member.decrypt(total, noise_key=k1))
    assert not np.array_equal(client.decrypt(total, noise_key=k1), client.decrypt(total, noise_key=k2))
    assert 0.9 < float(np.std(client.decrypt(total, noise_key=k1) - x)) / DEFAULT.flood_sigma < 1.1


def test_upload_and_download_bytes_per_parameter(client, server_ctx):
    length = 64 * CHUNK
    enc = client.encrypt(rng(3).uniform(-1, 1, length))
    up = enc.nbytes / length
    total = summed(server_ctx, [enc, enc, enc], length)
    down = total.nbytes / length
    print(f"CKKS bytes/param: upload {up:.3f}, download of a 3-member sum {down:.3f}")
    # One 56-bit coefficient (7 bytes) per parameter plus 65 bytes of seed per 4096 parameters.
    assert abs(up - (7 + 65 / N)) < 1e-9
    assert abs(down - (7 + 3 * 65 / N)) < 1e-9  # one c0, whatever the number of contributors


# --- bad inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1.0, np.nan]),
        np.array([np.inf, 0.0]),
        np.array([-np.inf]),
        np.zeros((2, 3)),
        np.zeros(0),
        np.array([DEFAULT.max_abs_value * 1.01]),
        np.array([1 + 1j]),
        np.array([True, False]),
        "not a vector",
    ],
)
def test_bad_plaintext_input_is_refused(client, bad):
    with pytest.raises(InvalidInput):
        client.encrypt(bad)


def test_wrong_sizes_are_invalid_messages(client, server_ctx):
    length = CHUNK + 1
    enc = client.encrypt(np.ones(length))
    agg = he.ServerAggregator(server_ctx, length)
    width = DEFAULT.coeff_bytes
    for c0, seeds in ((enc.c0[: N * width], enc.seeds), (enc.c0 + enc.c0[: N * width], enc.seeds),
                      (enc.c0, enc.seeds[:65]), (enc.c0[:-1], enc.seeds), (b"", b""), (enc.c0, enc.seeds + b"x")):
        with pytest.raises(InvalidMessage):
            agg.add(he.EncryptedVector.from_parts(DEFAULT, c0, seeds, length), sender="x")
    with pytest.raises(InvalidMessage):
        agg.add(he.EncryptedVector.from_parts(DEFAULT, enc.c0, enc.seeds, CHUNK), sender="x")
    with pytest.raises(InvalidMessage):
        he.ServerAggregator(server_ctx, 0)
    with pytest.raises(InvalidMessage):
        agg.add(he.EncryptedVector(DEFAULT.name, CHUNK, enc.c0[: N * width], enc.seeds[:65]), sender="x")
    with pytest.raises(InvalidMessage, match="unknown PRNG"):
        he.EncryptedVector.from_parts(DEFAULT, enc.c0, b"\x07" + enc.seeds[1:], length)
    assert agg.count == 0


def test_aggregation_is_exact_and_order_independent(client, server_ctx):
    length = CHUNK + 5
    uploads = [client.encrypt(rng(20 + i).uniform(-1, 1, length)) for i in range(3)]
    a = summed(server_ctx, uploads, length)
    b = summed(server_ctx, [uploads[2], uploads[0], uploads[1]], length)
    assert a.c0 == b.c0
    # The sum is c0 coefficient-wise modulo q (independent recomputation with Python integers).
    q = server_ctx.primes[0]
    coeffs = [he.vector.unpack_coeffs(u.c0, DEFAULT.coeff_bytes, server_ctx.primes, N).reshape(-1) for u in uploads]
    want = [(int(x) + int(y) + int(z)) % q for x, y, z in zip(*coeffs)]
    got = he.vector.unpack_coeffs(a.c0, DEFAULT.coeff_bytes, server_ctx.primes, N).reshape(-1)
    assert [int(v) for v in got] == want


def test_an_unreduced_coefficient_is_refused_and_leaves_the_running_sum_untouched(client, server_ctx):
    length = 600 * CHUNK  # several of the aggregator's batches: the bad one comes after valid ones
    x = rng(5).uniform(-1, 1, length)
    good = client.encrypt(x)
    agg = he.ServerAggregator(server_ctx, length)
    agg.add(good, sender="a")
    before = agg.result().c0
    width = DEFAULT.coeff_bytes
    bad = bytearray(good.c0)
    at = (len(bad) // width - 3) * width
    bad[at : at + width] = (server_ctx.primes[0]).to_bytes(8, "little")[:width]  # exactly q: not reduced
    with pytest.raises(InvalidMessage, match="not reduced"):
        agg.add(he.EncryptedVector.from_parts(DEFAULT, bytes(bad), good.seeds, length), sender="b")
    assert agg.result().c0 == before and agg.count == 1
    with pytest.raises(InvalidMessage, match="already added"):
        agg.add(good, sender="a")
    agg.add(good, sender="b")
    assert agg.count == 2
    assert np.max(np.abs(client.decrypt(agg.result())[:1000] - 2 * x[:1000])) < tol()


def test_empty_aggregate_and_too_many_summands_abort():
    small = CkksParams(**{**DEFAULT.model_dump(), "name": "test-two-summands", "max_summands": 2})
    c = he.generate_client_context(small)
    s = he.ServerContext.from_public_bytes(c.public_bytes(), small)
    agg = he.ServerAggregator(s, 10)
    with pytest.raises(ProtocolAbort):
        agg.result()
    enc = c.encrypt(np.ones(10))
    agg.add(enc, sender="a")
    agg.add(enc, sender="b")
    with pytest.raises(ProtocolAbort, match="overflow"):
        agg.add(enc, sender="c")
    with pytest.raises(InvalidInput):
        c.decrypt(agg.result(), summands=3)
    with pytest.raises(InvalidMessage):
        he.EncryptedSum.from_parts(small, enc.c0, [enc.seeds] * 3, 10)


# --- ciphertexts from elsewhere -----------------------------------------------------------------------


def test_ciphertext_under_another_parameter_set_is_rejected_by_the_server(server_ctx):
    other = he.generate_client_context("ckks-n8192-q60-s40")
    enc = other.encrypt(np.ones(10))
    with pytest.raises(InvalidMessage):
        he.ServerAggregator(server_ctx, 10).add(enc, sender="x")
    with pytest.raises(InvalidMessage):
        he.EncryptedVector.from_parts(DEFAULT, enc.c0, enc.seeds, 10)


def test_ciphertext_under_another_key_is_detected_on_decryption(client, server_ctx):
    stranger = he.generate_client_context(DEFAULT)
    length = CHUNK + 10
    total = summed(server_ctx, [client.encrypt(np.full(length, 0.5)), stranger.encrypt(np.full(length, 0.5))], length)
    with pytest.raises(ProtocolAbort, match="another key"):
        client.decrypt(total)
    # Even a full-length vector (no padding to check) decodes out of range under the wrong key.
    with pytest.raises(ProtocolAbort):
        client.decrypt(single(stranger.encrypt(np.zeros(CHUNK))))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c0=st.binary(max_size=4 * N * 7 + 3), seeds=st.binary(max_size=200))
def test_random_bytes_are_invalid_messages_or_well_formed(client, server_ctx, c0, seeds):
    try:
        vec = he.EncryptedVector.from_parts(DEFAULT, c0, seeds, 64)
    except InvalidMessage:
        return
    agg = he.ServerAggregator(server_ctx, 64)
    try:
        agg.add(vec, sender="x")
    except InvalidMessage:
        assert agg.count == 0
        return
    with pytest.raises(ProtocolAbort):  # random coefficients decrypt out of range
        client.decrypt(agg.result())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_contributions_never_crash(client, server_ctx, data):
    enc = _MUTATION_BASE.setdefault("enc", client.encrypt(rng(9).uniform(-1, 1, 64)))
    part = data.draw(st.sampled_from(["c0", "seeds"]))
    blob = getattr(enc, part)
    i = data.draw(st.integers(0, len(blob) - 1))
    bad = blob[:i] + bytes([blob[i] ^ (1 << data.draw(st.integers(0, 7)))]) + blob[i + 1 :]
    kw = {"c0": enc.c0, "seeds": enc.seeds, part: bad}
    try:
        vec = he.EncryptedVector.from_parts(DEFAULT, kw["c0"], kw["seeds"], 64)
        agg = he.ServerAggregator(server_ctx, 64)
        agg.add(vec, sender="x")
    except InvalidMessage:
        return
    # A flip in c0's low bits or in a seed is still a well-formed ciphertext (CKKS has no
    # integrity: the tags are what catch it); it must then behave as one.
    try:
        out = client.decrypt(agg.result())
    except ProtocolAbort:
        return
    assert out.shape == (64,) and np.all(np.isfinite(out))


_MUTATION_BASE: dict[str, he.EncryptedVector] = {}


# --- coefficient packing ------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(0, 2**56 - 1), min_size=1, max_size=40), n=st.sampled_from([1, 4, 8]))
def test_packing_round_trips_every_reduced_coefficient(values, n):
    q = 2**56 - 1  # a bound above every value here but the top one
    arr = np.array((values * n)[: (len(values) * n) // n * n], dtype=np.uint64)
    arr = arr[: arr.size // n * n]
    packed = he.vector.pack_coeffs(arr, 7)
    assert len(packed) == 7 * arr.size
    if all(v < q for v in arr.tolist()):
        np.testing.assert_array_equal(he.vector.unpack_coeffs(packed, 7, [q], n).reshape(-1), arr)
    else:
        with pytest.raises(InvalidMessage):
            he.vector.unpack_coeffs(packed, 7, [q], n)
