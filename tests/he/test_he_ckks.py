"""CKKS aggregation (securefed.he): parameters, key material, chunking, sums, wire validation."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed import he
from securefed.errors import CryptoError, InsecureParameters, InvalidInput, InvalidMessage, ProtocolAbort
from securefed.he import wire
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


def test_secret_round_trip_decrypts_the_other_members_ciphertexts(client):
    member = he.ClientContext.from_secret_bytes(client.serialize_secret(), DEFAULT.name)
    x = rng(1).uniform(-1, 1, 100)
    assert np.max(np.abs(member.decrypt(client.encrypt(x), summands=1) - x)) < tol()


# --- chunking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [1, SLOTS - 1, SLOTS, SLOTS + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7],
)
def test_chunking_round_trip(client, length):
    x = rng(length).uniform(-DEFAULT.max_abs_value, DEFAULT.max_abs_value, length)
    enc = client.encrypt(x)
    assert enc.length == length and len(enc.to_chunks()) == -(-length // CHUNK)
    again = he.EncryptedVector.from_chunks(DEFAULT, enc.to_chunks(), length)
    assert again == enc
    assert he.EncryptedVector.from_bytes(DEFAULT, enc.to_bytes(), length) == enc
    y = client.decrypt(again.to_chunks(), length, summands=1)
    assert y.shape == (length,)
    assert np.max(np.abs(y - x)) < tol()


# --- encrypted sums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_clients", [1, 2, 10, 100])
def test_sum_of_encrypted_vectors_decrypts_to_the_plaintext_sum(client, server_ctx, n_clients):
    length = CHUNK + 123
    xs = [rng(100 + i).uniform(-1, 1, length) for i in range(n_clients)]
    agg = he.ServerAggregator(server_ctx, length)
    for i, x in enumerate(xs):
        agg.add(client.encrypt(x).to_chunks(), sender=f"org-{i}")
    assert agg.count == n_clients
    expected = np.sum(xs, axis=0)
    total = client.decrypt(agg.result_chunks(), length, summands=n_clients)
    err = float(np.max(np.abs(total - expected)))
    # The CKKS error alone (before flooding) is far below the flooding noise.
    raw_err = float(np.max(np.abs(client._decode_checked(agg.result_chunks(), length, n_clients) - expected)))
    print(f"CKKS max abs error, {n_clients} clients, d={length}: {err:.3e} (bound {tol():.3e}), raw {raw_err:.3e}")
    assert err < tol()
    assert raw_err < CKKS_ERR


def test_decryption_flooding_has_the_documented_spread_and_is_fresh(client, server_ctx):
    length = 4 * CHUNK
    x = rng(7).uniform(-1, 1, length)
    chunks = client.encrypt(x).to_chunks()
    a = client.decrypt(chunks, length, summands=1)
    b = client.decrypt(chunks, length, summands=1)
    assert not np.array_equal(a, b)  # each release gets fresh noise
    ratio = float(np.std(a - x)) / DEFAULT.flood_sigma
    assert 0.9 < ratio < 1.1


def test_upload_and_download_stay_under_20_bytes_per_parameter(client, server_ctx):
    length = 4 * CHUNK
    enc = client.encrypt(rng(3).uniform(-1, 1, length))
    up = enc.nbytes / length
    agg = he.ServerAggregator(server_ctx, length)
    agg.add(enc)
    agg.add(enc.to_chunks())
    down = sum(map(len, agg.result_chunks())) / length
    print(f"CKKS bytes/param: upload {up:.2f}, download {down:.2f}")
    assert up < 9.0  # seeded symmetric ciphertext, one 56-bit coefficient per parameter
    assert down < 17.0  # the sum has no seed: both polynomials


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


def test_wrong_chunk_counts_and_lengths_are_invalid_messages(client, server_ctx):
    length = CHUNK + 1
    chunks = client.encrypt(np.ones(length)).to_chunks()
    agg = he.ServerAggregator(server_ctx, length)
    for bad in (chunks[:1], chunks + chunks[:1], [], b"".join(chunks), [1, 2]):
        with pytest.raises(InvalidMessage):
            agg.add(bad)
    with pytest.raises(InvalidMessage):
        client.decrypt(chunks, CHUNK)  # one chunk expected
    with pytest.raises(InvalidMessage):
        he.ServerAggregator(server_ctx, 0)
    with pytest.raises(InvalidMessage):
        client.decrypt(chunks, -1)
    with pytest.raises(InvalidMessage):
        agg.add(he.EncryptedVector(DEFAULT.name, CHUNK, tuple(chunks[:1])))
    assert agg.count == 0


def test_aggregation_is_deterministic_so_clients_can_recompute_it(client, server_ctx):
    length = CHUNK + 5
    uploads = [client.encrypt(rng(20 + i).uniform(-1, 1, length)).to_chunks() for i in range(3)]
    results = []
    for order in ([0, 1, 2], [2, 0, 1]):
        agg = he.ServerAggregator(server_ctx, length)
        for i in order:
            agg.add(uploads[i])
        results.append(agg.result_chunks())
    assert results[0] == results[1]


def test_bad_contribution_leaves_the_running_sum_untouched(client, server_ctx):
    length = 2 * CHUNK
    x = rng(5).uniform(-1, 1, length)
    good = client.encrypt(x).to_chunks()
    agg = he.ServerAggregator(server_ctx, length)
    agg.add(good, sender="a")
    with pytest.raises(InvalidMessage):
        agg.add([good[0], good[1][:-5]], sender="b")  # second chunk truncated: nothing is added
    with pytest.raises(InvalidMessage, match="already added"):
        agg.add(good, sender="a")
    agg.add(good, sender="b")
    assert agg.count == 2
    assert np.max(np.abs(client.decrypt(agg.result_chunks(), length, summands=2) - 2 * x)) < tol()


def test_empty_aggregate_and_too_many_summands_abort():
    small = CkksParams(**{**DEFAULT.model_dump(), "name": "test-two-summands", "max_summands": 2})
    c = he.generate_client_context(small)
    s = he.ServerContext.from_public_bytes(c.public_bytes(), small)
    agg = he.ServerAggregator(s, 10)
    with pytest.raises(ProtocolAbort):
        agg.result_chunks()
    enc = c.encrypt(np.ones(10))
    agg.add(enc)
    agg.add(enc)
    with pytest.raises(ProtocolAbort, match="overflow"):
        agg.add(enc)
    with pytest.raises(InvalidInput):
        c.decrypt(agg.result_chunks(), 10, summands=3)


# --- ciphertexts from elsewhere -----------------------------------------------------------------------


def test_ciphertext_under_another_parameter_set_is_rejected_by_the_server(server_ctx):
    other = he.generate_client_context("ckks-n8192-q60-s40")
    chunks = other.encrypt(np.ones(10)).to_chunks()
    with pytest.raises(InvalidMessage):
        he.ServerAggregator(server_ctx, 10).add(chunks)


def test_ciphertext_under_another_key_is_detected_on_decryption(client, server_ctx):
    stranger = he.generate_client_context(DEFAULT)
    length = CHUNK + 10
    agg = he.ServerAggregator(server_ctx, length)
    agg.add(client.encrypt(np.full(length, 0.5)))
    agg.add(stranger.encrypt(np.full(length, 0.5)))  # same parameters: the keyless server cannot tell
    with pytest.raises(ProtocolAbort, match="another key"):
        client.decrypt(agg.result_chunks(), length, summands=2)
    # Even a full-length vector (no padding to check) decodes out of range under the wrong key.
    with pytest.raises(ProtocolAbort):
        client.decrypt(stranger.encrypt(np.zeros(CHUNK)), summands=1)


def _valid_chunk(client) -> bytes:
    return client.encrypt(rng(9).uniform(-1, 1, 64)).to_chunks()[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_invalid_messages(client, server_ctx, data):
    with pytest.raises(InvalidMessage):
        he.ServerAggregator(server_ctx, 64).add([data])
    with pytest.raises(InvalidMessage):
        client.decrypt([data], 64, summands=1)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_ciphertexts_never_crash(client, server_ctx, data):
    chunk = _MUTATION_BASE.setdefault("chunk", _valid_chunk(client))
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "splice_header"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(chunk) - 1))
        bit = data.draw(st.integers(0, 7))
        bad = chunk[:i] + bytes([chunk[i] ^ (1 << bit)]) + chunk[i + 1 :]
    elif kind == "truncate":
        bad = chunk[: data.draw(st.integers(0, len(chunk) - 1))]
    elif kind == "append":
        bad = chunk + data.draw(st.binary(min_size=1, max_size=64))
    else:
        bad = chunk[:16] + data.draw(st.binary(max_size=256))
    agg = he.ServerAggregator(server_ctx, 64)
    try:
        agg.add([bad])
    except InvalidMessage:
        assert agg.count == 0
        return
    # A flip in c0's low bits or in the seed is still a well-formed ciphertext (CKKS has no
    # integrity); it must then behave as one.
    assert agg.count == 1
    try:
        out = client.decrypt(agg.result_chunks(), 64, summands=1)
    except ProtocolAbort:
        return
    assert out.shape == (64,) and np.all(np.isfinite(out))


_MUTATION_BASE: dict[str, bytes] = {}


def _seal_blob(frame: bytes) -> bytes:
    return struct.pack("<HBBBBHQ", wire.SEAL_MAGIC, 16, 4, 0, wire.COMPR_ZSTD, 0, 16 + len(frame)) + frame


def _zstd_frame(content_size: int, blocks: list[bytes]) -> bytes:
    # single segment, 4-byte frame content size, no checksum, no dictionary
    return struct.pack("<IB", 0xFD2FB528, 0b10100000) + struct.pack("<I", content_size) + b"".join(blocks)


def _rle_block(size: int, last: bool) -> bytes:
    return ((size << 3) | (1 << 1) | int(last)).to_bytes(3, "little") + b"\x00"


def test_decompression_bombs_are_refused_before_inflation(server_ctx):
    cap = wire.max_inflated_bytes(N, 1)
    agg = he.ServerAggregator(server_ctx, 10)
    # declares a gigabyte
    with pytest.raises(InvalidMessage, match="declares more"):
        agg.add([_seal_blob(_zstd_frame(1 << 30, [_rle_block(1000, True)]))])
    # declares a little but its RLE blocks expand far beyond it
    bomb = _zstd_frame(cap, [_rle_block(60_000, False)] * 99 + [_rle_block(60_000, True)])
    with pytest.raises(InvalidMessage, match="inflates beyond"):
        agg.add([_seal_blob(bomb)])
    # many small compressed blocks, each of which could regenerate a full window
    comp = ((1 << 3) | (2 << 1)).to_bytes(3, "little") + b"\x00"
    with pytest.raises(InvalidMessage, match="inflates beyond"):
        agg.add([_seal_blob(_zstd_frame(cap, [comp] * 200))])
    # a valid header around the wrong compression mode
    raw = struct.pack("<HBBBBHQ", wire.SEAL_MAGIC, 16, 4, 0, 0, 0, 40) + bytes(24)
    with pytest.raises(InvalidMessage, match="zstd"):
        agg.add([raw])
    assert agg.count == 0


# --- container ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(st.binary(max_size=50), max_size=5))
def test_chunk_container_round_trip(chunks):
    packed = wire.pack_chunks(chunks)
    assert wire.unpack_chunks(packed, max_chunks=5, max_chunk_bytes=50) == chunks


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_malformed_chunk_container_is_an_invalid_message(data):
    try:
        out = wire.unpack_chunks(data, max_chunks=4, max_chunk_bytes=64)
    except InvalidMessage:
        return
    assert wire.pack_chunks(out) == data  # anything accepted is canonical


def test_chunk_container_limits():
    packed = wire.pack_chunks([b"a" * 10, b"b"])
    with pytest.raises(InvalidMessage, match="at most"):
        wire.unpack_chunks(packed, max_chunks=1, max_chunk_bytes=64)
    with pytest.raises(InvalidMessage, match="exceeds"):
        wire.unpack_chunks(packed, max_chunks=2, max_chunk_bytes=5)
    with pytest.raises(InvalidMessage, match="trailing"):
        wire.unpack_chunks(packed + b"x", max_chunks=2, max_chunk_bytes=64)
    with pytest.raises(InvalidMessage, match="truncated"):
        wire.unpack_chunks(packed[:-1], max_chunks=2, max_chunk_bytes=64)
