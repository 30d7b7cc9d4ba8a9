"""The secagg mode (pairwise masking, Bonawitz et al. 2017 / SecAgg+) as a coordinator driver.

Wire messages in, ``securefed.secagg.SecAggServer`` in the middle, wire messages out. The driver
never sees an individual update: the state machine releases only the unmasked sum, and only when
enough survivors answered every stage.
"""

from __future__ import annotations

import hmac
import re

import numpy as np

from securefed import secagg as sa
from securefed.secagg.attribution import describe
from securefed.errors import InvalidMessage, ProtocolAbort, StaleMessage
from securefed.protocol import secagg_wire as wire
from securefed.protocol.plan import cohort_ids, plan_bytes
from securefed.protocol.stages import SECAGG_RESULT_STAGE, SECAGG_TO_WIRE
from securefed.server.attempt import AttemptContext, Phase, RoundOutcome
from securefed.server.driver import RoundDriver
from securefed.transport._generated import federation_pb2 as pb


class SecAggDriver(RoundDriver):
    """Bonawitz et al. 2017 / SecAgg+ through ``securefed.secagg.SecAggServer``.

    The plan phase also collects AdvertiseKeys: a client trains after accepting the plan and then
    advertises its round keys, so the key stage deadline (``training_s``) covers local training and
    the later stages stay short.
    """

    def __init__(self, ctx: AttemptContext) -> None:
        super().__init__(ctx)
        self.ids = cohort_ids(ctx.plan)
        self.params = ctx.config.secagg_params(len(ctx.cohort))
        self.server = sa.SecAggServer(
            self.params, round_id=ctx.attempt, vector_length=ctx.payload_length,
            cohort={self.ids.int_of(c): ctx.identity_keys[c] for c in ctx.cohort},
            plan=plan_bytes(ctx.plan),
            model_hash=ctx.global_digest,
            max_colluders=ctx.config.federation.max_colluding_members,
        )
        # member -> its masked-with signature and share complaints, sent before its upload
        self._masked_with: dict[str, tuple[bytes, tuple[sa.ShareComplaint, ...]]] = {}

    def first_phase(self) -> Phase:
        self.server.start()  # RoundSetup is derived by each client from the plan it receives
        return self.plan_phase()

    def _session_for(self, stage: int) -> bytes:
        return self.server.plan_digest if stage in (pb.STAGE_PLAN, pb.STAGE_ADVERTISE_KEYS) else self.server.session_id

    def on_result(self, phase: Phase, client: str, kind: str | None, req: pb.SubmitResultRequest) -> None:
        h = req.header
        self.refuse_if_declined(client)
        want_stage = SECAGG_RESULT_STAGE.get(kind or "")
        if want_stage is None:
            raise InvalidMessage(f"unexpected submission {kind!r}")
        if h.stage != want_stage:
            raise InvalidMessage("header stage does not match the message")
        current = pb.STAGE_ADVERTISE_KEYS if phase.stage == pb.STAGE_PLAN else phase.stage
        if want_stage != current:
            raise StaleMessage(f"{kind} refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        session = bytes(h.session_id)
        if not hmac.compare_digest(session, self._session_for(want_stage)):
            raise InvalidMessage("message belongs to another session")
        if kind == "masked_input_signature":
            if req.masked_input_signature.client_id != client:
                raise InvalidMessage("message names a client other than the caller")
            mw = req.masked_input_signature  # checked with the upload
            self._masked_with[client] = (bytes(mw.signature), wire.complaints_from_pb(mw, self.ids))
            return
        if kind == "advertise_keys":
            msg = wire.advertise_from_pb(req.advertise_keys, session, self.ids)
        elif kind == "share_keys":
            msg = wire.share_keys_from_pb(req.share_keys, session, self.ids)
        elif kind == "consistency_signature":
            msg = wire.consistency_from_pb(req.consistency_signature, session, self.ids)
        else:
            msg = wire.unmask_from_pb(req.unmask_response, session, self.ids)
        if msg.client_id != self.ids.int_of(client):
            raise InvalidMessage("message names a client other than the caller")
        self.server.receive(msg)
        phase.responded.add(client)

    def check_upload(self, phase: Phase, client: str, kind: int, stage: int, ring_bits: int,
                     part_sizes: tuple[int, ...]) -> None:
        if phase.stage != pb.STAGE_MASKED_INPUT or stage != pb.STAGE_MASKED_INPUT:
            raise StaleMessage(f"masked input refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        if client not in phase.expected:
            raise InvalidMessage("no masked input is expected from you in this round")
        self.expect_ring_vector(kind, ring_bits, self.params.ring_bits, part_sizes)

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        if phase.stage != pb.STAGE_MASKED_INPUT or stage != pb.STAGE_MASKED_INPUT:
            raise StaleMessage(f"masked input refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        if ring_bits != self.params.ring_bits:
            raise InvalidMessage(f"masked input in Z_2^{ring_bits}, the round uses Z_2^{self.params.ring_bits}")
        got = self._masked_with.get(client)
        if got is None:
            raise InvalidMessage("masked input refused: its masked-with signature was not sent first")
        msg = wire.masked_from_bytes(data, ring_bits, self.ctx.payload_length, self.server.session_id,
                                     self.ids.int_of(client), *got)
        self.server.receive(msg)
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:
        if phase.stage == pb.STAGE_PLAN:
            self.require(len(self.accepted()), "clients accepted the plan")
        try:
            out = self.server.close_stage()  # ProtocolAbort when too few answered
        except ProtocolAbort as exc:
            self._note_culprits()
            raise ProtocolAbort(self._named(str(exc))) from None
        self._note_culprits()
        ctx = self.ctx
        for cid in self.server.dropouts:
            name = self.ids.name_of(cid)
            if name not in ctx.declined:
                ctx.dropouts.add(name)
        if self.server.stage is sa.ServerStage.DONE:
            res = self.server.result
            contributors = tuple(self.ids.name_of(i) for i in res.survivors)
            return RoundOutcome(np.asarray(res.values, dtype=np.float64), contributors, tuple(sorted(ctx.dropouts)))
        wire_stage = SECAGG_TO_WIRE[sa.Stage(self.server.stage.value)]
        tasks = {self.ids.name_of(cid): self._task(wire_stage, msg) for cid, msg in out.items()}
        deadline = {
            pb.STAGE_SHARE_KEYS: "share_keys_s",
            pb.STAGE_MASKED_INPUT: "masked_input_s",
            pb.STAGE_CONSISTENCY_CHECK: "share_keys_s",
            pb.STAGE_UNMASK: "unmask_s",
        }[wire_stage]
        return self.open_phase(wire_stage, tasks, deadline)

    def _named(self, text: str) -> str:
        """The state machine's "client N" as the member's name, for the operator."""
        return re.sub(r"\bclient (\d+)\b", lambda m: self.ids.by_int.get(int(m.group(1)), m.group(0)), text)

    def _note_culprits(self) -> None:
        """Members the session proved at fault, for the coordinator to exclude (``server.culprits``)."""
        for cid, v in self.server.culprits.items():
            names = {i: self.ids.name_of(i) for i in (v.complainer, v.accused)}
            self.ctx.culprits.setdefault(self.ids.name_of(cid), {
                "reason": describe(v, name=names.__getitem__),
                "evidence": {"attempt": self.ctx.attempt, "names": {str(i): n for i, n in names.items()},
                             **(v.evidence or {})}})

    def _task(self, wire_stage: int, msg: object) -> pb.Task:
        """The task that hands one client its part of the state machine's output for the next stage."""
        ctx = self.ctx
        if isinstance(msg, sa.KeyBroadcast):
            t = ctx.task(wire_stage, key_broadcast=wire.key_broadcast_to_pb(msg, self.ids))
        elif isinstance(msg, sa.ShareDelivery):
            t = ctx.task(wire_stage, share_delivery=wire.share_delivery_to_pb(msg, self.ids))
        elif isinstance(msg, sa.SurvivorList):
            t = ctx.task(wire_stage, survivor_list=wire.survivors_to_pb(msg, self.ids))
        elif isinstance(msg, sa.UnmaskRequest):
            t = ctx.task(wire_stage, unmask_request=wire.unmask_request_to_pb(msg, self.ids))
        else:  # pragma: no cover - the state machine emits only the types above
            raise ProtocolAbort(f"unexpected server message {type(msg).__name__}")
        t.session_id = self.server.session_id
        return t
