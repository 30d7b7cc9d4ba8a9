"""The plaintext (debug) mode's upload format, as member and coordinator both read it."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.crypto.fixedpoint import decode_sum
from securefed.errors import InvalidMessage
from securefed.protocol.plaintext import decode_upload, encode_upload, fixed_point
from securefed.transport._generated import federation_pb2 as pb


def _plan(ring_bits: int = 64, length: int = 5) -> pb.RoundPlan:
    return pb.RoundPlan(vector_length=length, secagg=pb.SecAggParams(ring_bits=ring_bits, frac_bits=16, clip=4.0))


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_uploads_round_trip_and_sum_to_the_sum_of_the_payloads(ring_bits):
    plan = _plan(ring_bits)
    a, b = np.array([0.5, -1.25, 3.0, 0.0, -4.0]), np.array([1.0, 1.0, -2.5, 0.125, 2.0])
    bits_a, data_a = encode_upload(a, plan)
    bits_b, data_b = encode_upload(b, plan)
    assert bits_a == bits_b == ring_bits and len(data_a) == 5 * ring_bits // 8
    total = decode_upload(data_a, bits_a, plan) + decode_upload(data_b, bits_b, plan)
    np.testing.assert_allclose(decode_sum(total, fixed_point(plan), 2), a + b, atol=2 * 2.0**-16)


def test_a_wrong_ring_or_length_is_an_invalid_message():
    plan = _plan(64)
    _, data = encode_upload(np.zeros(5), plan)
    with pytest.raises(InvalidMessage, match="Z_2\\^32"):
        decode_upload(data[:20], 32, plan)
    with pytest.raises(InvalidMessage, match="bytes"):
        decode_upload(data[:-8], 64, plan)
