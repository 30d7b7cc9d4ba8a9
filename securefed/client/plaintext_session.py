"""DEBUG ONLY: the plaintext round, in which the server sees this member's update in clear.

Joined only when the member set ``client.allow_plaintext_for_debugging`` (``admission`` declines it
otherwise). The encoding is ``protocol.plaintext``: secure aggregation's fixed point without masks,
the reference the secure modes are compared against.
"""

from __future__ import annotations

import numpy as np

from securefed.client.session import RoundSession, SessionDeps
from securefed.protocol.plaintext import encode_upload
from securefed.transport._generated import federation_pb2 as pb


def send_plaintext(deps: SessionDeps, s: RoundSession, payload: np.ndarray) -> None:
    ring_bits, data = encode_upload(payload, s.plan)
    deps.record_release(s, payload)
    deps.connection.upload_masked(deps.connection.header(s.attempt, pb.STAGE_PLAINTEXT_UPLOAD), ring_bits, data)
    s.released = True
