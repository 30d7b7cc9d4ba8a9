"""securefed.crypto.prg: AES-256-CTR mask expansion against an independent ECB computation."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from conftest import json_parametrize
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed import errors
from securefed.crypto.keys import PURPOSE_MASK, derive_key
from securefed.crypto.prg import BLOCK_BYTES as _CHUNK_BYTES
from securefed.crypto.prg import add_mask_, add_masks_, expand_mask, keystream, stream_at
from securefed.errors import CryptoError, InvalidInput

DTYPES = {32: np.uint32, 64: np.uint64}
keys32 = st.binary(min_size=32, max_size=32)


def _ecb_mask(key: bytes, d: int, ring_bits: int) -> np.ndarray:
    """Reference: encrypt counter blocks 0, 1, ... with AES-256-ECB, read little-endian words."""
    nblocks = -(-d * ring_bits // 8 // 16) if d else 0
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = ecb.update(b"".join(i.to_bytes(16, "big") for i in range(nblocks)))
    return np.frombuffer(stream, dtype="<u4" if ring_bits == 32 else "<u8")[:d].astype(DTYPES[ring_bits])


@json_parametrize("prg", "verify")
def test_expand_mask_known_answers(vector):
    key = bytes.fromhex(vector["key"])
    mask = expand_mask(key, vector["d"], vector["ring_bits"])
    assert mask.dtype == DTYPES[vector["ring_bits"]] and mask.shape == (vector["d"],)
    assert [str(int(mask[i])) for i in vector["indices"]] == vector["words"]
    assert keystream(key, 64).hex() == vector["keystream_64"]


@json_parametrize("prg", "verify")
def test_add_mask_known_answers(vector):
    ring_bits, d = vector["ring_bits"], vector["d"]
    acc = np.full(d, 5, dtype=DTYPES[ring_bits])
    add_mask_(acc, bytes.fromhex(vector["key"]), 1)
    expected = [(int(w) + 5) % 2**ring_bits for w in vector["words"]]
    assert [int(acc[i]) for i in vector["indices"]] == expected


@json_parametrize("prg", "invalid")
def test_expand_mask_rejects_bad_parameters(vector):
    error = getattr(errors, vector["error"])
    with pytest.raises(error):
        expand_mask(bytes.fromhex(vector["key"]), vector["d"], vector["ring_bits"])
    if vector["error"] == "CryptoError":  # same key checks on the hot path and raw keystream
        with pytest.raises(CryptoError):
            add_mask_(np.zeros(4, DTYPES[vector["ring_bits"]]), bytes.fromhex(vector["key"]), 1)
        with pytest.raises(CryptoError):
            keystream(bytes.fromhex(vector["key"]), 16)


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("d", [0, 1, 3, 5, 1000, _CHUNK_BYTES // 4 + 7, 2 * _CHUNK_BYTES // 8 + 1])
def test_expand_mask_matches_ecb_reference_across_chunks(ring_bits, d):
    key = secrets.token_bytes(32)
    np.testing.assert_array_equal(expand_mask(key, d, ring_bits), _ecb_mask(key, d, ring_bits))


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_add_mask_equals_expand_mask_and_wraps(ring_bits):
    key = secrets.token_bytes(32)
    d = _CHUNK_BYTES // 4 + 13  # crosses an internal chunk boundary for both rings
    top = np.iinfo(DTYPES[ring_bits]).max
    acc = np.full(d, top, dtype=DTYPES[ring_bits])
    add_mask_(acc, key, 1)
    mask = expand_mask(key, d, ring_bits)
    np.testing.assert_array_equal(acc, mask - np.array(1, dtype=DTYPES[ring_bits]))  # top + m == m - 1
    add_mask_(acc, key, -1)
    assert (acc == top).all()


def test_add_mask_keeps_shape_for_multidimensional_accumulators():
    key = secrets.token_bytes(32)
    acc = np.zeros((3, 5, 7), dtype=np.uint32)
    add_mask_(acc, key, 1)
    assert acc.shape == (3, 5, 7)
    np.testing.assert_array_equal(acc.reshape(-1), expand_mask(key, 105, 32))


@pytest.mark.parametrize(
    ("acc", "sign"),
    [
        (np.zeros(4, np.int32), 1),
        (np.zeros(4, np.float64), 1),
        (np.zeros(4, np.uint16), 1),
        (np.zeros((4, 4), np.uint32)[:, 0], 1),  # not contiguous: a silent copy would lose the mask
        (np.zeros(4, np.uint32), 2),
        (np.zeros(4, np.uint32), 0),
        (np.zeros(4, np.uint32), True),
        ([0, 0, 0], 1),
    ],
)
def test_add_mask_rejects_bad_accumulators(acc, sign):
    with pytest.raises(InvalidInput):
        add_mask_(acc, b"\x01" * 32, sign)


def test_add_mask_rejects_read_only_accumulator():
    acc = np.zeros(8, np.uint64)
    acc.flags.writeable = False
    with pytest.raises(InvalidInput):
        add_mask_(acc, b"\x01" * 32, 1)


@settings(max_examples=40, deadline=None)
@given(key=keys32, ring_bits=st.sampled_from([32, 64]), data=st.data())
def test_add_then_subtract_restores(key, ring_bits, data):
    values = data.draw(st.lists(st.integers(0, 2**ring_bits - 1), max_size=300))
    acc = np.array(values, dtype=DTYPES[ring_bits])
    original = acc.copy()
    add_mask_(acc, key, 1)
    if len(values) > 8:
        assert not np.array_equal(acc, original)
    add_mask_(acc, key, -1)
    np.testing.assert_array_equal(acc, original)


@settings(max_examples=40, deadline=None)
@given(key=keys32, ring_bits=st.sampled_from([32, 64]), d1=st.integers(0, 500), extra=st.integers(1, 500))
def test_expansion_of_shorter_length_is_a_prefix(key, ring_bits, d1, extra):
    short, long = expand_mask(key, d1, ring_bits), expand_mask(key, d1 + extra, ring_bits)
    np.testing.assert_array_equal(short, long[:d1])


@settings(max_examples=30, deadline=None)
@given(secret=keys32, sid1=keys32, sid2=keys32)
def test_same_pair_in_two_sessions_gets_unrelated_masks(secret, sid1, sid2):
    if sid1 == sid2:
        return
    k1 = derive_key(secret, session_id=sid1, purpose=PURPOSE_MASK, party_a=1, party_b=2)
    k2 = derive_key(secret, session_id=sid2, purpose=PURPOSE_MASK, party_a=1, party_b=2)
    m1, m2 = expand_mask(k1, 256, 32), expand_mask(k2, 256, 32)
    # Unrelated streams agree on a 32-bit word with probability 2^-32 each.
    assert np.count_nonzero(m1 == m2) <= 2


def test_mask_depends_on_every_key_byte():
    """Would catch a PRG seeded from part of the key (e.g. numpy's 32-bit seed)."""
    key = bytes(range(32))
    base = expand_mask(key, 64, 64)
    for i in range(32):
        for flip in (0x01, 0x80):
            other = bytearray(key)
            other[i] ^= flip
            changed = expand_mask(bytes(other), 64, 64)
            assert np.count_nonzero(changed == base) <= 1, f"byte {i} (xor {flip:#x}) did not change the mask"


def test_mask_is_not_a_numpy_seeded_stream():
    """The mask must not equal numpy's output for any seed derived from the key's first 4/8 bytes."""
    key = bytes(range(1, 33))
    mask = expand_mask(key, 16, 32)
    for seed in (
        int.from_bytes(key[:4], "little"),
        int.from_bytes(key[:4], "big"),
        int.from_bytes(key[:8], "little") % 2**32,
    ):
        legacy = np.random.RandomState(seed).randint(0, 2**32, 16, dtype=np.uint64)  # not secret: reference
        modern = np.random.default_rng(seed).integers(0, 2**32, 16, dtype=np.uint64)  # not secret: reference
        for candidate in (legacy, modern):
            assert not np.array_equal(mask.astype(np.uint64), candidate)


def test_masks_from_different_keys_look_independent():
    d = 1 << 16
    a = expand_mask(secrets.token_bytes(32), d, 32)
    b = expand_mask(secrets.token_bytes(32), d, 32)
    # Sum of two independent uniform masks is uniform: mean of the top bit ~ 1/2 (sd 0.002).
    diff = a - b
    top_bit_rate = float(np.mean(diff >> np.uint32(31)))
    assert abs(top_bit_rate - 0.5) < 0.02
    # Per-bit balance of one mask (each bit ~ Bernoulli(1/2); 10 sd tolerance).
    bits = np.unpackbits(a.view(np.uint8)).mean()
    assert abs(bits - 0.5) < 10 * 0.5 / np.sqrt(d * 32)
    assert np.count_nonzero(a == b) <= 3


def test_keystream_length_and_prefix():
    key = secrets.token_bytes(32)
    long = keystream(key, 1000)
    assert len(long) == 1000 and keystream(key, 17) == long[:17] and keystream(key, 0) == b""
    with pytest.raises(InvalidInput):
        keystream(key, -1)


@settings(max_examples=30, deadline=None)
@given(key=keys32, block=st.integers(0, 10_000))
def test_stream_at_an_offset_is_that_slice_of_the_keystream(key, block):
    """Workers seek each stream to their range: counter block offset/16, as OpenSSL increments it."""
    ref = keystream(key, 16 * (block + 3))
    assert stream_at(key, 16 * block).update(bytes(48)) == ref[16 * block:]


def test_stream_at_refuses_unaligned_offsets():
    with pytest.raises(InvalidInput):
        stream_at(bytes(32), 8)


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_add_masks_is_the_same_for_any_number_of_workers(ring_bits, workers):
    from securefed.crypto import prg
    d = 4 * prg._MIN_WORDS_PER_WORKER + 1001  # enough words that every worker gets a range
    masks = [(secrets.token_bytes(32), s) for s in (1, -1, -1, 1)]
    ref = np.zeros(d, DTYPES[ring_bits])
    for key, sign in masks:
        m = expand_mask(key, d, ring_bits)
        ref = ref + m if sign == 1 else ref - m
    acc = np.zeros(d, DTYPES[ring_bits])
    add_masks_(acc, masks, workers=workers)
    np.testing.assert_array_equal(acc, ref)


def test_a_bad_key_anywhere_in_the_list_changes_nothing():
    acc = np.arange(10, dtype=np.uint32)
    with pytest.raises(CryptoError):
        add_masks_(acc, [(bytes(32), 1), (b"short", 1)])
    with pytest.raises(InvalidInput):
        add_masks_(acc, [(bytes(32), 1), (bytes(32), 0)])
    np.testing.assert_array_equal(acc, np.arange(10, dtype=np.uint32))
