"""The plaintext (debug) mode's one message: a member's payload in clear, as fixed point.

DEBUG ONLY (``federation.allow_plaintext_for_debugging``). The encoding, ring and clip are the
plan's ``secagg`` parameters, exactly as under secure aggregation but without the masks, so a
plaintext round is the reference the secure modes are compared with. The member sends the ring
elements, little-endian, as a ``TRANSFER_KIND_RING_VECTOR`` transfer with header stage
``STAGE_PLAINTEXT_UPLOAD``.
"""

from __future__ import annotations

import numpy as np

from securefed.crypto.fixedpoint import FixedPointParams, encode
from securefed.errors import InvalidMessage
from securefed.protocol.secagg_wire import RING_DTYPES
from securefed.transport._generated import federation_pb2 as pb


def fixed_point(plan: pb.RoundPlan) -> FixedPointParams:
    """The fixed-point encoding the plan fixes for every payload element."""
    p = plan.secagg
    return FixedPointParams(clip=float(p.clip), frac_bits=int(p.frac_bits), ring_bits=int(p.ring_bits))


def encode_upload(values: np.ndarray, plan: pb.RoundPlan) -> tuple[int, bytes]:
    """(ring_bits, bytes) of a member's payload vector, for its ring-vector upload."""
    fp = fixed_point(plan)
    enc, _ = encode(np.asarray(values, dtype=np.float64), fp)
    return fp.ring_bits, np.ascontiguousarray(enc, dtype=RING_DTYPES[fp.ring_bits]).tobytes()


def decode_upload(data: bytes, ring_bits: int, plan: pb.RoundPlan) -> np.ndarray:
    """The ring elements of one upload (native byte order), after checking ring and length."""
    fp = fixed_point(plan)
    if ring_bits != fp.ring_bits:
        raise InvalidMessage(f"upload in Z_2^{ring_bits}, the round uses Z_2^{fp.ring_bits}")
    dt = RING_DTYPES[ring_bits]
    want = int(plan.vector_length) * dt.itemsize
    if len(data) != want:
        raise InvalidMessage(f"plaintext upload is {len(data)} bytes, the round expects {want}")
    return np.frombuffer(data, dtype=dt).astype(dt.newbyteorder("="), copy=True)
