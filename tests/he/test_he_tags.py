"""securefed.he.tags: exact modular arithmetic, linearity, sealing, and forged sums caught (with controls)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed import he
from securefed.crypto.prg import keystream
from securefed.errors import CryptoError
from securefed.he import tags
from securefed.he.vector import pack_coeffs, unpack_coeffs

P = he.get_params(he.DEFAULT_PARAMS_NAME)
N = P.poly_modulus_degree
PLAN = bytes(range(32))


@pytest.fixture(scope="module")
def fed():
    members = he.generate_client_context(P)
    server = he.ServerContext.from_public_bytes(members.public_bytes(), P)
    return members, server


def _encs(members, n: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)  # not secret: test data
    xs = [rng.uniform(-1, 1, length) for _ in range(n)]
    return xs, [members.encrypt(x) for x in xs]


def _sum(server, encs, length):
    agg = he.ServerAggregator(server, length)
    for i, e in enumerate(encs):
        agg.add(e, sender=f"m{i}")
    return agg.result()


@settings(max_examples=60, deadline=None)
@given(a=st.lists(st.integers(0, 2**60 - 1), min_size=1, max_size=41), data=st.data())
def test_dot_mod_is_exact(a, data):
    r = data.draw(st.lists(st.integers(0, 2**59 - 1), min_size=len(a), max_size=len(a)))
    q = data.draw(st.sampled_from([2**61 - 1, 72057594037641217, 1152921504606584833, 97]))
    got = tags._dot_mod(np.array(a, np.uint64), np.array(r, np.uint64), q)
    assert got == sum(x * y for x, y in zip(a, r)) % q


def test_linear_tag_known_answer_by_independent_recomputation(fed):
    members, _ = fed
    q = members.primes[0]
    rng = np.random.default_rng(3)
    coeffs = rng.integers(0, q, size=2 * N, dtype=np.uint64)  # two ciphertexts' c0
    key = bytes(range(1, 33))
    got = tags.linear_tag(pack_coeffs(coeffs, P.coeff_bytes), P, members.primes, key)
    # r_j = keystream word j (little-endian u64) >> (65 - 56): uniform below 2^55 < q.
    ks = keystream(key, 8 * coeffs.size)
    r = [int.from_bytes(ks[8 * j : 8 * j + 8], "little") >> (65 - P.data_prime_bit_sizes[0]) for j in range(coeffs.size)]
    assert got == (sum(int(c) * rj for c, rj in zip(coeffs.tolist(), r)) % q,)


def test_the_true_sum_passes_in_any_order(fed):
    members, server = fed
    length = 3 * N + 11
    _, encs = _encs(members, 4, length)
    keys = members.attempt_keys(PLAN, 7)
    t = [members.contribution_tag(e, keys) for e in encs]
    assert members.sum_matches(_sum(server, encs, length), t, keys)
    assert members.sum_matches(_sum(server, encs[::-1], length), t[::-1], keys)
    # Another attempt's key gives other tags: nothing carries over between attempts.
    other = members.attempt_keys(PLAN, 8)
    assert members.contribution_tag(encs[0], other) != t[0]
    assert not members.sum_matches(_sum(server, encs, length), t, other)


OFFSET = 0.25


def _plain_coeffs(members, value: float) -> np.ndarray:
    """The NTT coefficients of ``value`` in every slot, encoded at the CKKS scale: what the keyless
    server can add to a c0 to shift the decryption by ``value`` (CKKS is malleable)."""
    import tenseal.sealapi as sealapi

    pt = sealapi.Plaintext()
    members._encoder.encode([complex(value, value)] * P.slot_count, P.scale, pt)
    return np.array([pt.data(i) for i in range(N)], dtype=object)


def _forgeries(members, server, encs, length):
    """What a malicious server can hand a decryptor instead of the sum of ``encs``."""
    q = members.primes[0]
    c = [unpack_coeffs(e.c0, P.coeff_bytes, members.primes, N).astype(object) for e in encs]
    true = _sum(server, encs, length)

    def packed(arr):
        return pack_coeffs(np.array(arr % q, dtype=np.uint64), P.coeff_bytes)

    flipped = bytearray(true.c0)
    flipped[3] ^= 0x10
    shifted = unpack_coeffs(true.c0, P.coeff_bytes, members.primes, N).astype(object)
    shifted[0, 0] += _plain_coeffs(members, OFFSET)  # a trivial encryption (Delta * p, 0) of a chosen offset
    weighted = sum(c[1:]) + 1000 * c[0]  # member 0 weighted 1000x
    return {
        "bit flip": dataclasses.replace(true, c0=bytes(flipped)),
        "chosen offset": dataclasses.replace(true, c0=packed(shifted)),
        "member 0 weighted 1000x": dataclasses.replace(true, c0=packed(weighted)),
        "member 0 alone": dataclasses.replace(true, c0=encs[0].c0),
    }


def test_every_forged_sum_fails_the_check_and_the_control_shows_each_would_be_decrypted(fed):
    members, server = fed
    length = 2 * N
    xs, encs = _encs(members, 3, length, seed=1)
    keys = members.attempt_keys(PLAN, 7)
    t = [members.contribution_tag(e, keys) for e in encs]
    for why, forged in _forgeries(members, server, encs, length).items():
        assert not members.sum_matches(forged, t, keys), why
    # Control: without the check, a forged sum is simply decrypted (CKKS has no integrity): the
    # server's chosen offset comes out in the released value, so it steers what members release.
    out = members.decrypt(_forgeries(members, server, encs, length)["chosen offset"])
    np.testing.assert_allclose(out[:N], sum(xs)[:N] + OFFSET, atol=1e-4)
    np.testing.assert_allclose(out[N:], sum(xs)[N:], atol=1e-4)


def test_with_tags_in_the_clear_a_weighted_forgery_passes_so_tags_are_sealed(fed):
    """The issue's attack, as the negative control of sealing: a server that saw the tags could solve
    for weights sum(a_i t_i) = sum(t_i) with member 0 weighted 1000x, and the forged sum would pass."""
    members, server = fed
    length = N
    _, encs = _encs(members, 3, length, seed=2)
    q = members.primes[0]
    keys = members.attempt_keys(PLAN, 7)
    t = [members.contribution_tag(e, keys)[0] for e in encs]
    c = [unpack_coeffs(e.c0, P.coeff_bytes, members.primes, N).astype(object) for e in encs]

    def forge(guess):
        a0, a2 = 1000, 1  # solve a1: 1000 t0 + a1 t1 + t2 = t0 + t1 + t2 (mod q)
        a1 = ((guess[0] + guess[1] + guess[2]) - a0 * guess[0] - a2 * guess[2]) * pow(guess[1], -1, q) % q
        arr = (a0 * c[0] + a1 * c[1] + a2 * c[2]) % q
        return dataclasses.replace(_sum(server, encs, length), c0=pack_coeffs(np.array(arr, dtype=np.uint64), P.coeff_bytes))

    clear = [(x,) for x in t]
    assert members.sum_matches(forge(t), clear, keys)  # control: known tags -> the forgery passes
    # Sealed, the server only has AEAD ciphertexts; any guess it makes gives a forgery that fails.
    sealed = [tags.seal_tag(keys, (x,), plan_sha256=PLAN, attempt=7, client=f"m{i}") for i, x in enumerate(t)]
    assert all(len(s) == 8 + 28 for s in sealed)
    rng = np.random.default_rng(4)
    for _ in range(5):
        guess = [int(v) for v in rng.integers(1, q, size=3, dtype=np.uint64)]
        assert not members.sum_matches(forge(guess), clear, keys)


def test_sealed_tags_open_only_for_their_plan_attempt_and_contributor(fed):
    members, _ = fed
    keys = members.attempt_keys(PLAN, 7)
    primes = members.primes
    sealed = tags.seal_tag(keys, (12345,), plan_sha256=PLAN, attempt=7, client="alice")
    assert tags.open_tag(keys, sealed, primes, plan_sha256=PLAN, attempt=7, client="alice") == (12345,)
    outsider = he.generate_client_context(P).attempt_keys(PLAN, 7)  # another federation's key
    cases = [
        (keys, sealed, PLAN, 7, "bob"),  # moved to another contributor
        (keys, sealed, PLAN, 8, "alice"),  # replayed into another attempt
        (keys, sealed, bytes(32), 7, "alice"),  # another plan
        (outsider, sealed, PLAN, 7, "alice"),
        (keys, sealed[:-1] + bytes([sealed[-1] ^ 1]), PLAN, 7, "alice"),
        (keys, sealed[:10], PLAN, 7, "alice"),
    ]
    for k, blob, plan, attempt, who in cases:
        with pytest.raises(CryptoError):
            tags.open_tag(k, blob, primes, plan_sha256=plan, attempt=attempt, client=who)
    # A tag >= q is refused even when sealed by a member (it cannot come from a real contribution).
    big = tags.seal_tag(keys, (primes[0],), plan_sha256=PLAN, attempt=7, client="alice")
    with pytest.raises(CryptoError):
        tags.open_tag(keys, big, primes, plan_sha256=PLAN, attempt=7, client="alice")


def test_attempt_keys_are_distinct_per_purpose_attempt_and_plan(fed):
    members, _ = fed
    a = members.attempt_keys(PLAN, 7)
    assert len({a.vector, a.seal, a.flood}) == 3
    assert a != members.attempt_keys(PLAN, 8) and a != members.attempt_keys(bytes(32), 7)
    assert a == he.ClientContext.from_secret_bytes(members.serialize_secret(), P.name).attempt_keys(PLAN, 7)
