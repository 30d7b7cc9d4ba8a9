"""The contract every aggregation mode implements (``RoundDriver``), and the plan stage they share.

A driver turns the client messages of one attempt into the next ``Phase`` and, at the end, into
the decoded SUM of the clients' payload vectors (``RoundOutcome``). The round loop asks it for the
first phase and, at each deadline or once everyone answered, for the next; the mailbox hands it
each client message after the header checks. Every method runs under the coordinator's condition
variable, so none may block: no network, no waiting, nothing slower than checking and adding.
"""

from __future__ import annotations

import abc
import hmac
from collections.abc import Callable

from securefed.errors import InvalidMessage, ProtocolAbort, StaleMessage
from securefed.logs import get_logger, log
from securefed.protocol.stages import stage_name
from securefed.server.attempt import AttemptContext, Phase, RoundOutcome
from securefed.transport._generated import federation_pb2 as pb

# The round's events stay in one stream, whichever part logs them.
logger = get_logger("server.coordinator")


class RoundDriver(abc.ABC):
    """One aggregation mode. Methods run under the coordinator lock; they must not block."""

    def __init__(self, ctx: AttemptContext) -> None:
        self.ctx = ctx

    # --- plan stage, shared by every mode ----------------------------------------------------------
    def plan_phase(self) -> Phase:
        c = self.ctx
        tasks = {cid: c.task(pb.STAGE_PLAN, plan=c.plan) for cid in c.cohort}
        return Phase(pb.STAGE_PLAN, tasks, frozenset(c.cohort), c.config.deadlines.training_s, deadline_key="training_s")

    def on_decision(self, phase: Phase, client: str, req: pb.SubmitResultRequest) -> None:
        if phase.stage != pb.STAGE_PLAN:
            raise StaleMessage("plan decision outside the plan stage")
        if not hmac.compare_digest(bytes(req.header.session_id), bytes(self.ctx.plan.plan_sha256)):
            raise InvalidMessage("plan decision for another plan (header.session_id must be the plan digest)")
        d = req.plan_decision
        if not d.participate:
            reason = (d.decline_reason or "declined")[:300]
            self.ctx.declined[client] = reason
            self.ctx.decline_kinds[client] = d.decline_kind
            phase.responded.add(client)
            log(logger, "client declined the attempt", attempt=self.ctx.attempt, round=self.ctx.round, client=client,
                reason=reason)

    def accepted(self) -> list[str]:
        return [c for c in self.ctx.cohort if c not in self.ctx.declined]

    def refuse_if_declined(self, client: str) -> None:
        if client in self.ctx.declined:
            raise InvalidMessage("you declined this round")

    def require(self, n: int, what: str) -> None:
        need = self.ctx.config.federation.threshold
        if n < need:
            raise ProtocolAbort(f"only {n} {what}, threshold is {need}: no aggregate is released")

    def open_phase(self, stage: int, tasks: dict[str, pb.Task], deadline: str | float, label: str | None = None) -> Phase:
        """The next phase: every client with a task is expected to answer by the deadline: the ``[deadlines]``
        setting named ``deadline`` (so an abort can name it), or that many seconds."""
        log(logger, "stage opened", attempt=self.ctx.attempt, stage=label or stage_name(stage), participants=sorted(tasks))
        key = deadline if isinstance(deadline, str) else ""
        seconds = getattr(self.ctx.config.deadlines, key) if key else float(deadline)
        return Phase(stage, tasks, frozenset(tasks), seconds, deadline_key=key)

    # --- mode specific ---------------------------------------------------------------------------
    @abc.abstractmethod
    def first_phase(self) -> Phase: ...

    def on_submit(self, phase: Phase, client: str, req: pb.SubmitResultRequest) -> None:
        kind = req.WhichOneof("result")
        if kind == "plan_decision":
            self.on_decision(phase, client, req)
        else:
            self.on_result(phase, client, kind, req)

    def on_result(self, phase: Phase, client: str, kind: str | None, req: pb.SubmitResultRequest) -> None:
        """A ``SubmitResult`` other than the plan decision."""
        raise InvalidMessage(f"{kind} is not expected in this aggregation mode")

    def check_upload(self, phase: Phase, client: str, kind: int, stage: int, ring_bits: int,
                     part_sizes: tuple[int, ...]) -> None:
        """Before a byte of an upload is buffered (``server.transfers``): refuse it unless this stage
        takes it from this client, with exactly these part sizes (or sizes within the mode's bounds)."""
        raise InvalidMessage("uploads are not expected in this aggregation mode")

    def expect_ring_vector(self, kind: int, ring_bits: int, want_bits: int, part_sizes: tuple[int, ...]) -> None:
        """An upload must be one vector of the round's length in Z_2^want_bits."""
        if kind != pb.TRANSFER_KIND_RING_VECTOR:
            raise InvalidMessage("this stage takes a ring vector")
        if ring_bits != want_bits:
            raise InvalidMessage(f"upload in Z_2^{ring_bits}, the round uses Z_2^{want_bits}")
        want = self.ctx.payload_length * want_bits // 8
        if tuple(part_sizes) != (want,):
            raise InvalidMessage(f"upload declares {sum(part_sizes)} bytes in {len(part_sizes)} part(s), "
                                 f"the round expects one of {want}")

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        raise InvalidMessage("masked uploads are not expected in this aggregation mode")

    def on_ciphertext_upload(self, phase: Phase, client: str, parts: list[bytes]) -> None:
        raise InvalidMessage("ciphertext uploads are not expected in this aggregation mode")

    @abc.abstractmethod
    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome: ...

    def download(self, client: str) -> tuple[int, list[bytes]] | None:
        """(AggregateKind, parts) this driver serves to ``client`` now, or None (serve the global)."""
        return None


DriverFactory = Callable[[AttemptContext], RoundDriver]
