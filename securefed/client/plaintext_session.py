"""DEBUG ONLY: the plaintext round, in which the server sees this member's update in clear.

Joined only when the member set ``client.allow_plaintext_for_debugging`` (``admission`` declines it
otherwise). Same fixed-point encoding as secure aggregation, without masks: the reference the secure
modes are compared against.
"""

from __future__ import annotations

import numpy as np

from securefed.client.session import RoundSession, SessionDeps
from securefed.crypto.fixedpoint import FixedPointParams, encode
from securefed.transport._generated import federation_pb2 as pb


def send_plaintext(deps: SessionDeps, s: RoundSession, payload: np.ndarray) -> None:
    p = s.plan.secagg
    fp = FixedPointParams(clip=float(p.clip), frac_bits=int(p.frac_bits), ring_bits=int(p.ring_bits))
    enc, _ = encode(np.asarray(payload, dtype=np.float64), fp)
    deps.record_release(s, payload)
    data = enc.astype(enc.dtype.newbyteorder("<")).tobytes()
    deps.connection.upload_masked(deps.connection.header(s.attempt, pb.STAGE_PLAINTEXT_UPLOAD), fp.ring_bits, data)
    s.released = True
