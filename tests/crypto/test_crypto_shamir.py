"""securefed.crypto.shamir: fixed-coefficient vectors, threshold properties, malformed shares."""

from __future__ import annotations

import itertools

import pytest
from conftest import json_parametrize
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto.shamir import (
    MAX_SECRET_SIZE,
    PRIME,
    SHARE_SIZE,
    Share,
    _split_with_coefficients,
    combine,
    split,
)
from securefed.errors import CryptoError, InsecureParameters, InvalidInput


def _shares(raw: list[dict]) -> list[Share]:
    return [Share(s["x"], int(s["y"], 16)) for s in raw]


def test_prime_is_m521():
    assert PRIME == 2**521 - 1
    assert pow(3, PRIME - 1, PRIME) == 1  # Fermat check (M521 is a proven Mersenne prime)
    assert PRIME > 2 ** (8 * MAX_SECRET_SIZE) > 2**256


@json_parametrize("shamir", "generate")
def test_split_with_fixed_coefficients(vector):
    coefficients = [int(c, 16) for c in vector["coefficients"]]
    got = _split_with_coefficients(bytes.fromhex(vector["secret"]), vector["n"], coefficients)
    assert got == _shares(vector["shares"])
    assert [s.x for s in got] == list(range(1, vector["n"] + 1))


@json_parametrize("shamir", "verify")
def test_combine_known_subsets(vector):
    secret = combine(_shares(vector["shares"]), vector["t"], vector["secret_len"])
    assert secret.hex() == vector["secret"]


@json_parametrize("shamir", "invalid")
def test_combine_refuses_malformed_share_sets(vector):
    with pytest.raises(CryptoError):
        combine(_shares(vector["shares"]), vector["t"], 32)


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=32),
    n=st.integers(1, 8),
    data=st.data(),
)
def test_any_t_subset_reconstructs(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = split(secret, n, t)
    assert [s.x for s in shares] == list(range(1, n + 1))
    for subset in itertools.combinations(shares, t):
        assert combine(list(subset), t, len(secret)) == secret
    ordering = data.draw(st.permutations(shares))
    assert combine(ordering, t, len(secret)) == secret  # all n, extras checked for consistency


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(2, 8), data=st.data())
def test_t_minus_one_shares_do_not_reveal_secret(secret, n, data):
    t = data.draw(st.integers(2, n))
    shares = split(secret, n, t)
    subset = data.draw(st.lists(st.sampled_from(shares), min_size=t - 1, max_size=t - 1, unique_by=lambda s: s.x))
    with pytest.raises(CryptoError):
        combine(subset, t)  # refuses outright
    # Interpolating t-1 points as if the threshold were t-1 gives a uniform field element:
    # it fails the length check or, with probability ~2^-265, is some other value.
    try:
        wrong = combine(subset, t - 1)
    except CryptoError:
        return
    assert wrong != secret


def test_split_uses_fresh_coefficients():
    secret = b"\x07" * 32
    a, b = split(secret, 5, 3), split(secret, 5, 3)
    assert [s.y for s in a] != [s.y for s in b]


def test_one_modified_share_is_detected_when_extras_present():
    shares = split(b"k" * 32, 6, 3)
    shares[4] = Share(shares[4].x, (shares[4].y + 1) % PRIME)
    with pytest.raises(CryptoError, match="inconsistent"):
        combine(shares, 3)


@settings(max_examples=20, deadline=None)
@given(x=st.integers(1, 2**64 - 1), y=st.integers(0, PRIME - 1))
def test_share_bytes_round_trip(x, y):
    share = Share(x, y)
    raw = share.to_bytes()
    assert len(raw) == SHARE_SIZE
    assert Share.from_bytes(raw) == share


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(SHARE_SIZE - 1),
        bytes(SHARE_SIZE + 1),
        bytes(SHARE_SIZE),  # x = 0
        (1).to_bytes(8, "big") + PRIME.to_bytes(66, "big"),  # y = p
        (1).to_bytes(8, "big") + (2**528 - 1).to_bytes(66, "big"),
    ],
)
def test_share_from_bytes_rejects(raw):
    with pytest.raises(CryptoError):
        Share.from_bytes(raw)


def test_share_repr_hides_value():
    share = split(b"\x01" * 32, 2, 2)[0]
    assert str(share.y) not in repr(share) and hex(share.y) not in repr(share)


@pytest.mark.parametrize(
    ("secret", "n", "t", "error"),
    [
        (b"s" * 32, 3, 4, InsecureParameters),
        (b"s" * 32, 3, 0, InvalidInput),
        (b"s" * 32, 0, 1, InvalidInput),
        (b"", 3, 2, InvalidInput),
        (b"s" * (MAX_SECRET_SIZE + 1), 3, 2, InvalidInput),
        ("text", 3, 2, InvalidInput),
        (b"s" * 32, 3, True, InvalidInput),
    ],
)
def test_split_rejects_bad_parameters(secret, n, t, error):
    with pytest.raises(error):
        split(secret, n, t)


def test_combine_checks_secret_length_and_types():
    shares = split(b"\xff" * 32, 3, 2)
    with pytest.raises(CryptoError, match="does not fit"):
        combine(shares, 2, secret_len=16)
    with pytest.raises(CryptoError):
        combine([(1, 2), (2, 3)], 2)  # type: ignore[list-item]
    with pytest.raises(CryptoError):
        Share("1", 2)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        combine(shares, 0)


def test_leading_zero_secret_round_trips_with_its_length():
    secret = b"\x00\x00\x01" + b"\x00" * 29
    assert combine(split(secret, 4, 3)[1:], 3, 32) == secret


@settings(max_examples=40, deadline=None)
@given(xs=st.lists(st.integers(1, 5000), min_size=1, max_size=12, unique=True), at=st.integers(0, 5000), data=st.data())
def test_cached_lagrange_weights_match_the_textbook_formula(xs, at, data):
    """The weights (one inversion for all, cached by coordinates) equal prod (x - x_j)/(x_i - x_j)."""
    from securefed.crypto import shamir

    ys = data.draw(st.lists(st.integers(0, shamir.PRIME - 1), min_size=len(xs), max_size=len(xs)))
    points = [shamir.Share(x, y) for x, y in zip(xs, ys)]
    want = 0
    for i, pi in enumerate(points):
        num = den = 1
        for j, pj in enumerate(points):
            if i != j:
                num, den = num * (at - pj.x) % shamir.PRIME, den * (pi.x - pj.x) % shamir.PRIME
        want = (want + pi.y * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
    assert shamir._interpolate(points, at) == want
    assert shamir._interpolate(points, at) == want  # and again from the cache
