"""Aggregation modes as coordinator drivers: secagg (pairwise masking), ckks, plaintext (debug only).

A driver turns the client messages of one attempt into the next phase and, at the end, into the
decoded SUM of the clients' payload vectors (``RoundOutcome``). It never sees an individual
update in secagg or ckks mode: the secagg state machine only releases the unmasked sum, and the
CKKS driver only adds ciphertexts and collects the clients' decryption of that sum.
"""

from __future__ import annotations

import hmac

import numpy as np

from securefed import secagg as sa
from securefed.errors import InvalidMessage, ProtocolAbort
from securefed.logs import log
from securefed.protocol import secagg_wire as wire
from securefed.protocol.ckks import (
    confirmation_payload,
    contribution_digest,
    contribution_payload,
    decode_decrypted,
    digest_parts,
    encode_contributions,
    split_upload,
)
from securefed.protocol.plan import cohort_ids, plan_bytes
from securefed.protocol.stages import SECAGG_TO_WIRE
from securefed.server.coordinator import (
    AttemptContext,
    Phase,
    RoundDriver,
    RoundOutcome,
    logger,
)
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import secagg_pb2 as secagg_pb


def secagg_params(ctx: AttemptContext) -> sa.SecAggParams:
    fed = ctx.config.federation
    n = len(ctx.cohort)
    k = fed.neighbour_degree or None
    return sa.SecAggParams(threshold=fed.threshold, neighbour_degree=k if k is None or k < n - 1 else None,
                           ring_bits=fed.ring_bits, frac_bits=fed.frac_bits, clip=ctx.config.payload_bound())


class SecAggDriver(RoundDriver):
    """Bonawitz et al. 2017 / SecAgg+ through ``securefed.secagg.SecAggServer``.

    The plan phase also collects AdvertiseKeys: a client trains after accepting the plan and then
    advertises its round keys, so the key stage deadline (``training_s``) covers local training and
    the later stages stay short.
    """

    def __init__(self, ctx: AttemptContext) -> None:
        super().__init__(ctx)
        self.ids = cohort_ids(ctx.plan)
        self.params = secagg_params(ctx)
        self.server = sa.SecAggServer(
            self.params, round_id=ctx.attempt, vector_length=ctx.payload_length,
            cohort={self.ids.int_of(c): ctx.identity_keys[c] for c in ctx.cohort},
            plan=plan_bytes(ctx.plan),
            model_hash=ctx.global_digest,
        )
        self.session = b""

    def first_phase(self) -> Phase:
        self.server.start()  # RoundSetup is derived by each client from the plan it receives
        return self.plan_phase()

    def _session_for(self, stage: int) -> bytes:
        return self.server.plan_digest if stage in (pb.STAGE_PLAN, pb.STAGE_ADVERTISE_KEYS) else self.server.session_id

    def on_submit(self, phase: Phase, client: str, req: pb.SubmitResultRequest) -> None:
        kind = req.WhichOneof("result")
        h = req.header
        if kind == "plan_decision":
            self.on_decision(phase, client, req)
            return
        if client in self.ctx.declined:
            raise InvalidMessage("you declined this round")
        want_stage = {"advertise_keys": pb.STAGE_ADVERTISE_KEYS, "share_keys": pb.STAGE_SHARE_KEYS,
                      "consistency_signature": pb.STAGE_CONSISTENCY_CHECK, "unmask_response": pb.STAGE_UNMASK}.get(kind)
        if want_stage is None:
            raise InvalidMessage(f"unexpected submission {kind!r}")
        if h.stage != want_stage:
            raise InvalidMessage("header stage does not match the message")
        current = pb.STAGE_ADVERTISE_KEYS if phase.stage == pb.STAGE_PLAN else phase.stage
        if want_stage != current:
            raise InvalidMessage(f"{kind} refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        session = bytes(h.session_id)
        if not hmac.compare_digest(session, self._session_for(want_stage)):
            raise InvalidMessage("message belongs to another session")
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

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        if phase.stage != pb.STAGE_MASKED_INPUT or stage != pb.STAGE_MASKED_INPUT:
            raise InvalidMessage(f"masked input refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        if ring_bits != self.params.ring_bits:
            raise InvalidMessage(f"masked input in Z_2^{ring_bits}, the round uses Z_2^{self.params.ring_bits}")
        msg = wire.masked_from_bytes(data, ring_bits, self.ctx.payload_length, self.server.session_id, self.ids.int_of(client))
        self.server.receive(msg)
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:
        if phase.stage == pb.STAGE_PLAN:
            accepted = self.accepted()
            self.require(len(accepted), "clients accepted the plan")
        out = self.server.close_stage()  # ProtocolAbort when too few answered
        ctx = self.ctx
        stage = self.server.stage
        for cid, st in self.server.dropouts.items():
            name = self.ids.name_of(cid)
            if name not in ctx.declined:
                ctx.dropouts.add(name)
        if stage is sa.ServerStage.DONE:
            res = self.server.result
            contributors = tuple(self.ids.name_of(i) for i in res.survivors)
            return RoundOutcome(np.asarray(res.values, dtype=np.float64), contributors, tuple(sorted(ctx.dropouts)))
        wire_stage = SECAGG_TO_WIRE[sa.Stage(stage.value)]
        sid = self.server.session_id
        tasks: dict[str, pb.Task] = {}
        for cid, msg in out.items():
            name = self.ids.name_of(cid)
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
            t.session_id = sid
            tasks[name] = t
        deadline = {
            pb.STAGE_SHARE_KEYS: ctx.config.deadlines.share_keys_s,
            pb.STAGE_MASKED_INPUT: ctx.config.deadlines.masked_input_s,
            pb.STAGE_CONSISTENCY_CHECK: ctx.config.deadlines.share_keys_s,
            pb.STAGE_UNMASK: ctx.config.deadlines.unmask_s,
        }[wire_stage]
        log(logger, "stage opened", attempt=ctx.attempt, stage=pb.Stage.Name(wire_stage).removeprefix("STAGE_").lower(),
            participants=sorted(tasks))
        return Phase(wire_stage, tasks, frozenset(tasks), deadline)


class PlaintextDriver(RoundDriver):
    """DEBUG ONLY (``allow_plaintext_for_debugging``): clients upload fixed-point vectors in clear.

    Same encoding and the same sum as secagg, without the masks, so it is the reference the
    secure modes are compared with (and the baseline of bench/round.py).
    """

    def first_phase(self) -> Phase:
        self.vectors: dict[str, np.ndarray] = {}
        fed = self.ctx.config.federation
        from securefed.crypto.fixedpoint import FixedPointParams

        self.fp = FixedPointParams(clip=self.ctx.config.payload_bound(), frac_bits=fed.frac_bits, ring_bits=fed.ring_bits)
        return self.plan_phase()

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        if phase.stage != pb.STAGE_PLAN or stage != pb.STAGE_PLAINTEXT_UPLOAD:
            raise InvalidMessage("plaintext upload refused at this stage")
        if client in self.ctx.declined:
            raise InvalidMessage("you declined this round")
        if ring_bits != self.fp.ring_bits:
            raise InvalidMessage(f"upload in Z_2^{ring_bits}, the round uses Z_2^{self.fp.ring_bits}")
        m = wire.masked_from_bytes(data, ring_bits, self.ctx.payload_length, b"\0" * 32, 0)
        self.vectors[client] = m.masked
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:
        from securefed.crypto.fixedpoint import decode_sum

        got = sorted(self.vectors)
        self.require(len(got), "clients uploaded")
        total = np.zeros(self.ctx.payload_length, dtype=self.vectors[got[0]].dtype)
        for c in got:
            np.add(total, self.vectors[c], out=total)
        sums = decode_sum(total, self.fp, len(got))
        return RoundOutcome(np.asarray(sums, dtype=np.float64), tuple(got), tuple(sorted(self.ctx.dropouts)))


class CkksDriver(RoundDriver):
    """CKKS: members upload ciphertexts under the federation's shared secret key, each signed with
    their certified identity key; the server adds nothing it cannot check and holds no key.

    Decryption must not become an oracle, nor a differencing tool:

    1. *Confirm.* Every uploader downloads the decryption request: all signed contributions. It
       checks that at least ``threshold`` distinct cohort members signed their ciphertexts for this
       plan and attempt, its own included and unchanged (``client.ckks.checked_contributions``), and
       signs the request's digest. An honest member confirms one request per attempt.
    2. *Decrypt.* The server hands the confirmations back. A member decrypts only when at least
       ``threshold`` distinct cohort members confirmed the very request it checked; with the threshold
       a strict majority of the cohort, two different contributor sets cannot both be confirmed, so
       the server cannot obtain two sums over different sets and take their difference. The member
       adds the contributions itself and decrypts that sum (with flooding noise).

    The server applies the decrypted SUM only when all decryptions agree to within the CKKS noise, so
    one lying decryptor aborts the round rather than steering the model. Cost: a decryptor downloads
    every contribution, O(n) update sizes.
    """

    AGREEMENT_TOL = 1e-3

    def __init__(self, ctx: AttemptContext, server_ctx) -> None:
        super().__init__(ctx)
        from securefed.he import ServerAggregator

        self.agg = ServerAggregator(server_ctx, ctx.payload_length)
        self.uploaded: list[str] = []
        self.contributions: dict[str, tuple[bytes, list[bytes]]] = {}
        self.request_parts: list[bytes] | None = None
        self.request_digest = b""
        self.confirmations: dict[str, bytes] = {}
        self.decrypted: dict[str, np.ndarray] = {}

    def first_phase(self) -> Phase:
        return self.plan_phase()

    def on_ciphertext_upload(self, phase: Phase, client: str, parts: list[bytes]) -> None:
        from securefed.crypto.keys import verify_signature

        if phase.stage != pb.STAGE_PLAN:
            raise InvalidMessage(f"ciphertext refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        if client in self.ctx.declined:
            raise InvalidMessage("you declined this round")
        chunks, sig = split_upload(parts)
        verify_signature(self.ctx.identity_keys[client], sig,
                         contribution_payload(self.ctx.plan.plan_sha256, self.ctx.attempt, client,
                                              contribution_digest(chunks)))
        self.agg.add(chunks, sender=client)  # validates every ciphertext before adding
        self.contributions[client] = (sig, chunks)
        self.uploaded.append(client)
        phase.responded.add(client)

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        if phase.stage != pb.STAGE_AGGREGATE or stage != pb.STAGE_AGGREGATE:
            raise InvalidMessage("decrypted aggregate refused at this stage")
        if client not in phase.expected:
            raise InvalidMessage("you were not asked to decrypt this aggregate")
        self.decrypted[client] = decode_decrypted(data, self.ctx.payload_length)
        phase.responded.add(client)

    def download(self, client: str) -> tuple[int, list[bytes]] | None:
        if self.request_parts is not None and client in self.uploaded:
            return pb.AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM, self.request_parts
        return None

    def on_submit(self, phase: Phase, client: str, req: pb.SubmitResultRequest) -> None:
        from securefed.crypto.keys import verify_signature

        kind = req.WhichOneof("result")
        if kind == "plan_decision":
            self.on_decision(phase, client, req)
            return
        if kind != "consistency_signature" or req.header.stage != pb.STAGE_CONSISTENCY_CHECK:
            raise InvalidMessage(f"{kind} is not expected in this aggregation mode")
        if phase.stage != pb.STAGE_CONSISTENCY_CHECK or client not in phase.expected:
            raise InvalidMessage("confirmation refused at this stage")
        sig = bytes(req.consistency_signature.signature)
        verify_signature(self.ctx.identity_keys[client], sig,
                         confirmation_payload(self.ctx.plan.plan_sha256, self.ctx.attempt, self.request_digest))
        self.confirmations[client] = sig
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:
        ctx = self.ctx
        if phase.stage == pb.STAGE_PLAN:
            self.require(len(self.uploaded), "clients uploaded ciphertexts")
            names = sorted(self.uploaded)
            self.request_parts = encode_contributions([(c, *self.contributions[c]) for c in names])
            self.request_digest = digest_parts(self.request_parts)
            size = sum(len(p) for p in self.request_parts)
            ready = pb.AggregateReady(total_size=size, sha256=self.request_digest)
            tasks = {c: ctx.task(pb.STAGE_CONSISTENCY_CHECK, aggregate_ready=ready) for c in names}
            log(logger, "stage opened", attempt=ctx.attempt, stage="confirm", participants=names)
            return Phase(pb.STAGE_CONSISTENCY_CHECK, tasks, frozenset(tasks), ctx.config.deadlines.decrypt_s)
        if phase.stage == pb.STAGE_CONSISTENCY_CHECK:
            confirmed = sorted(self.confirmations)
            self.require(len(confirmed), "members confirmed the decryption request")
            req = pb.DecryptRequest(request_sha256=self.request_digest, confirmations=[
                secagg_pb.ConsistencySignature(client_id=c, signature=self.confirmations[c]) for c in confirmed])
            tasks = {c: ctx.task(pb.STAGE_AGGREGATE, decrypt_request=req) for c in confirmed}
            log(logger, "stage opened", attempt=ctx.attempt, stage="decrypt", participants=confirmed)
            return Phase(pb.STAGE_AGGREGATE, tasks, frozenset(tasks), ctx.config.deadlines.decrypt_s)
        if not self.decrypted:
            raise ProtocolAbort("no client returned the decrypted aggregate")
        names = sorted(self.decrypted)
        ref = self.decrypted[names[0]]
        for n in names[1:]:
            if float(np.max(np.abs(self.decrypted[n] - ref), initial=0.0)) > self.AGREEMENT_TOL:
                raise ProtocolAbort("decryptions of the aggregate disagree: a decryptor lied or erred; nothing applied")
        sums = np.mean([self.decrypted[n] for n in names], axis=0)
        # CKKS decryption (and its flooding noise) is approximate: a true sum at the edge of the
        # range can come back a hair outside it. Clamping to the range is post-processing.
        lim = len(self.uploaded) * ctx.config.payload_bound()
        sums = np.clip(sums, -lim, lim)
        # Decryptors that stayed silent did contribute; they are not dropouts of the sum.
        ctx.dropouts.difference_update(self.uploaded)
        return RoundOutcome(sums, tuple(sorted(self.uploaded)), tuple(sorted(ctx.dropouts)))
