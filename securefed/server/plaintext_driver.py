"""The plaintext mode (DEBUG ONLY) as a coordinator driver: add the members' fixed-point uploads.

Refused unless ``federation.allow_plaintext_for_debugging``: the server sees every update. Same
encoding and the same sum as secagg, without the masks (``securefed.protocol.plaintext``), so it is
the reference the secure modes are compared with, and the baseline of bench/round.py.
"""

from __future__ import annotations

import numpy as np

from securefed.crypto.fixedpoint import decode_sum
from securefed.errors import StaleMessage
from securefed.protocol.plaintext import decode_upload, fixed_point
from securefed.server.attempt import AttemptContext, Phase, RoundOutcome
from securefed.server.driver import RoundDriver
from securefed.transport._generated import federation_pb2 as pb


class PlaintextDriver(RoundDriver):
    """Members upload fixed-point vectors in clear while the plan stage is open; the sum is decoded."""

    def __init__(self, ctx: AttemptContext) -> None:
        super().__init__(ctx)
        self.vectors: dict[str, np.ndarray] = {}
        self.fp = fixed_point(ctx.plan)

    def first_phase(self) -> Phase:
        return self.plan_phase()

    def check_upload(self, phase: Phase, client: str, kind: int, stage: int, ring_bits: int,
                     part_sizes: tuple[int, ...]) -> None:
        if phase.stage != pb.STAGE_PLAN or stage != pb.STAGE_PLAINTEXT_UPLOAD:
            raise StaleMessage("plaintext upload refused at this stage")
        self.refuse_if_declined(client)
        self.expect_ring_vector(kind, ring_bits, self.fp.ring_bits, part_sizes)

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        if phase.stage != pb.STAGE_PLAN or stage != pb.STAGE_PLAINTEXT_UPLOAD:
            raise StaleMessage("plaintext upload refused at this stage")
        self.refuse_if_declined(client)
        self.vectors[client] = decode_upload(data, ring_bits, self.ctx.plan)
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:
        got = sorted(self.vectors)
        self.require(len(got), "clients uploaded")
        total = np.zeros(self.ctx.payload_length, dtype=self.vectors[got[0]].dtype)
        for c in got:
            np.add(total, self.vectors[c], out=total)
        sums = decode_sum(total, self.fp, len(got))
        return RoundOutcome(np.asarray(sums, dtype=np.float64), tuple(got), tuple(sorted(self.ctx.dropouts)))
