"""The member's secure-aggregation session: server tasks in, ``SecAggClient`` messages out.

A thin adapter: every protocol check lives in the pure state machine (``securefed.secagg.client``);
this module converts wire messages (``protocol.secagg_wire``), adds the member-side guards that need
the plan (the session must be the plan's; a SecAgg+ key broadcast must carry every listed member's
keys), writes the ledger entry before the masked input leaves, and sends each reply.
"""

from __future__ import annotations

import hmac
import logging

import numpy as np

from securefed import secagg as sa
from securefed.client.guards import GraphGrindingGuard
from securefed.client.session import RoundSession, SessionDeps
from securefed.errors import ProtocolAbort
from securefed.logs import get_logger, log
from securefed.protocol import secagg_wire as wire
from securefed.protocol.plan import plan_bytes
from securefed.protocol.stages import SECAGG_TASK_STAGE
from securefed.secagg.client import setup_digest
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("client")


class SecAggSession:
    def __init__(self, deps: SessionDeps, session: RoundSession, grinding: GraphGrindingGuard, *,
                 needs_all_keys: bool, max_colluders: int) -> None:
        self.deps = deps
        self.s = session
        self.grinding = grinding
        self.needs_all_keys = needs_all_keys
        self.sparse = session.plan.secagg.neighbours != 0
        plan = session.plan

        def accept(setup: sa.RoundSetup) -> None:
            if setup.model_hash != bytes(plan.global_adapter_sha256) or setup.plan != plan_bytes(plan):
                raise ProtocolAbort("round setup does not match the plan this client accepted")

        self.client = sa.SecAggClient(session.me, deps.identity, accept_setup=accept, max_colluders=max_colluders)

    def start(self, payload: np.ndarray) -> None:
        """Take the update as input and advertise this round's keys."""
        s = self.s
        setup0 = wire.round_setup(s.plan, s.ids, b"\0" * 32)
        setup = sa.RoundSetup(**{**setup0.__dict__, "session_id": setup_digest(setup0)})
        self.payload: np.ndarray | None = np.asarray(payload, dtype=np.float64)
        self.client.set_input(self.payload)
        adv = self.client.handle(setup)
        if self.sparse:
            self.grinding.joined(s.attempt)
        self.deps.fault("before_advertise", s.attempt)
        self._submit(pb.STAGE_ADVERTISE_KEYS, adv.session_id, advertise_keys=wire.advertise_to_pb(adv, s.ids))

    def on_task(self, task: pb.Task) -> None:
        """Answer the stage ``task`` opens (key broadcast, share delivery, survivors, unmask request)."""
        s, ids = self.s, self.s.ids
        body = task.WhichOneof("body")
        stage = SECAGG_TASK_STAGE[body]
        sid = bytes(task.session_id)
        if body == "key_broadcast":
            kb = wire.key_broadcast_from_pb(task.key_broadcast, ids)
            if not hmac.compare_digest(kb.session_id, sid):
                raise ProtocolAbort("key broadcast names another session")
            if self.sparse and self.needs_all_keys and len(kb.keys) != len(s.plan.cohort):
                # With a sparse graph, the set of keys seeds the graph: letting the server choose whom
                # to leave out lets it grind for a graph that surrounds a victim with colluders.
                raise ProtocolAbort("sparse-graph round with members' keys left out: leaving it (graph grinding guard)")
            reply = self.client.handle(kb)
            self.deps.fault("before_share_keys", s.attempt)
            self._submit(stage, reply.session_id, share_keys=wire.share_keys_to_pb(reply, ids))
        elif body == "share_delivery":
            masked = self.client.handle(wire.share_delivery_from_pb(task.share_delivery, sid, s.me, ids))
            for c in masked.complaints:  # reported with the masked input, with the key that proves it
                log(logger, "SECURITY: a peer's signed share does not open: reported to the server with evidence",
                    level=logging.ERROR, attempt=s.attempt, peer=ids.name_of(c.accused))
            self.deps.fault("before_masked_input", s.attempt)
            self.deps.record_release(s, self.payload)  # ledger first: nothing has left the member yet
            self.payload = None
            bits, data = wire.masked_to_bytes(masked)
            self._submit(stage, masked.session_id, masked_input_signature=wire.masked_with_to_pb(masked, ids))
            self.deps.connection.upload_masked(self._header(stage, masked.session_id), bits, data)
            s.released = True
            self.grinding.released(s.attempt)
            self.deps.fault("after_masked_input", s.attempt)
        elif body == "survivor_list":
            reply = self.client.handle(wire.survivors_from_pb(task.survivor_list, sid, ids))
            self._submit(stage, reply.session_id, consistency_signature=wire.consistency_to_pb(reply, ids))
        else:  # unmask_request
            reply = self.client.handle(wire.unmask_request_from_pb(task.unmask_request, sid, ids))
            self.deps.fault("before_unmask", s.attempt)
            self._submit(stage, reply.session_id, unmask_response=wire.unmask_to_pb(reply, ids))
            self.grinding.finished(s.attempt)  # a session seen through: the grinding guard starts afresh

    def _header(self, stage: int, session_id: bytes) -> pb.RequestHeader:
        return self.deps.connection.header(self.s.attempt, stage, session_id)

    def _submit(self, stage: int, session_id: bytes, **result) -> None:
        self.deps.connection.submit(self._header(stage, session_id), **result)
