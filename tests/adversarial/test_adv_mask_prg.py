"""Masks must be unpredictable to anyone without the 256-bit key.

A known weakness of a popular framework's SecAgg+ was a mask PRG seeded through numpy with a 32-bit
seed: anyone could enumerate 2^32 seeds and strip a mask. These tests would have caught that: they
show a control PRG of that shape fails the same checks our AES-CTR PRG passes.
"""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from securefed.crypto.keys import PURPOSE_MASK, PURPOSE_SHARE_ENCRYPTION, AgreementKeyPair, derive_key
from securefed.crypto.prg import add_mask_, expand_mask
from securefed.errors import CryptoError

D = 1 << 15


def _bit_balance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-bit frequency of a XOR b over the vector: about 1/2 for every bit if a, b are unrelated."""
    x = np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))
    bits = a.dtype.itemsize * 8
    return np.array([np.mean((x >> np.uint64(i)) & np.uint64(1)) for i in range(bits)])


def assert_unrelated(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    # Equal words: expected D / 2^32 ~ 0.
    assert int(np.count_nonzero(a == b)) <= 2
    # Each bit of a XOR b is a fair coin: 6 sigma around 1/2.
    sigma = 0.5 / np.sqrt(a.size)
    assert np.all(np.abs(_bit_balance(a, b) - 0.5) < 6 * sigma)
    # The difference is not constant (a shifted stream) and not the negation.
    assert len(np.unique((a - b)[:64])) > 60 and len(np.unique((a + b)[:64])) > 60


def _numpy_seeded_prg(key: bytes, d: int) -> np.ndarray:
    """The weak design, as a control: a 32-bit numpy seed taken from the key."""
    seed = int.from_bytes(key[:4], "little")
    return np.random.RandomState(seed).randint(0, 2**32, size=d, dtype=np.uint64).astype(np.uint32)  # not secret


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_keys_differing_only_beyond_the_first_four_bytes_give_unrelated_masks(ring_bits):
    key = secrets.token_bytes(32)
    for pos in (4, 16, 31):
        other = bytearray(key)
        other[pos] ^= 0x01
        assert_unrelated(expand_mask(key, D, ring_bits), expand_mask(bytes(other), D, ring_bits))


def test_the_check_catches_a_numpy_seeded_prg():
    # The control: the 32-bit-seed design gives IDENTICAL masks for such keys, so the check above fails.
    key = secrets.token_bytes(32)
    other = key[:4] + secrets.token_bytes(28)
    with pytest.raises(AssertionError):
        assert_unrelated(_numpy_seeded_prg(key, D), _numpy_seeded_prg(other, D))


def test_no_32_bit_numpy_seed_in_a_sample_reproduces_a_mask_prefix():
    key = secrets.token_bytes(32)
    prefix = expand_mask(key, 4, 32)
    # Seeds an attacker would try first (0.., the key's own first/last 4 bytes) plus random ones.
    seeds = list(range(2000)) + [int.from_bytes(key[:4], e) for e in ("little", "big")]
    seeds += [int.from_bytes(key[-4:], e) for e in ("little", "big")]
    seeds += [secrets.randbelow(2**32) for _ in range(2000)]
    for s in seeds:
        legacy = np.random.RandomState(s).randint(0, 2**32, size=4, dtype=np.uint64).astype(np.uint32)  # not secret
        modern = np.random.default_rng(s).integers(0, 2**32, size=4, dtype=np.uint64).astype(np.uint32)  # not secret
        assert not np.array_equal(legacy, prefix) and not np.array_equal(modern, prefix)
    # And the control design IS reproduced by its seed, so this search has teeth.
    weak = _numpy_seeded_prg(key, 4)
    s = int.from_bytes(key[:4], "little")
    assert np.array_equal(np.random.RandomState(s).randint(0, 2**32, size=4, dtype=np.uint64).astype(np.uint32), weak)


def test_the_same_agreement_keys_in_two_sessions_give_unrelated_masks():
    # Even if round keys were (wrongly) reused, the session id salts HKDF: masks do not repeat.
    u, v = AgreementKeyPair.generate(), AgreementKeyPair.generate()
    shared = u.exchange(v.public_bytes())
    sid1, sid2 = secrets.token_bytes(32), secrets.token_bytes(32)
    k1 = derive_key(shared, session_id=sid1, purpose=PURPOSE_MASK, party_a=1, party_b=2)
    k2 = derive_key(shared, session_id=sid2, purpose=PURPOSE_MASK, party_a=1, party_b=2)
    k_enc = derive_key(shared, session_id=sid1, purpose=PURPOSE_SHARE_ENCRYPTION, party_a=1, party_b=2)
    assert len({k1, k2, k_enc}) == 3
    assert_unrelated(expand_mask(k1, D, 32), expand_mask(k2, D, 32))
    # Both ends derive the same key and the pair's masks cancel exactly in the sum.
    k1_other_end = derive_key(v.exchange(u.public_bytes()), session_id=sid1, purpose=PURPOSE_MASK,
                              party_a=2, party_b=1)
    assert k1_other_end == k1
    acc = np.zeros(D, dtype=np.uint32)
    add_mask_(acc, k1, +1)
    assert np.count_nonzero(acc) > D - 4
    add_mask_(acc, k1_other_end, -1)
    assert not acc.any()


def test_a_mask_from_a_truncated_or_short_key_is_refused():
    for bad in (b"", bytes(4), bytes(31), bytes(33)):
        with pytest.raises(CryptoError):
            expand_mask(bad, 8, 32)
