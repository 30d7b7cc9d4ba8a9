"""The ckks mode as a coordinator driver: add signed ciphertexts, let the members decrypt the sum.

The server holds only the federation's public CKKS context (no secret key): it checks and adds
ciphertexts, hands the members one decryption request, and applies their decryption of the sum.
The messages and what each party signs are ``securefed.protocol.ckks``.
"""

from __future__ import annotations

import numpy as np

from securefed import he
from securefed.crypto.keys import verify_signature
from securefed.errors import InvalidMessage, ProtocolAbort, StaleMessage
from securefed.he.wire import max_blob_bytes
from securefed.protocol.ckks import (
    SIGNATURE_BYTES,
    confirmation_payload,
    contribution_digest,
    contribution_payload,
    decode_decrypted,
    digest_parts,
    encode_contributions,
    split_upload,
)
from securefed.server.attempt import AttemptContext, Phase, RoundOutcome
from securefed.server.driver import RoundDriver
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import secagg_pb2 as secagg_pb


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

    def __init__(self, ctx: AttemptContext, server_ctx: he.ServerContext) -> None:
        super().__init__(ctx)
        self.agg = he.ServerAggregator(server_ctx, ctx.payload_length)
        self.uploaded: list[str] = []
        self.contributions: dict[str, tuple[bytes, list[bytes]]] = {}
        self.request_parts: list[bytes] | None = None
        self.request_digest = b""
        self.confirmations: dict[str, bytes] = {}
        self.decrypted: dict[str, np.ndarray] = {}

    def first_phase(self) -> Phase:
        return self.plan_phase()

    def check_upload(self, phase: Phase, client: str, kind: int, stage: int, ring_bits: int,
                     part_sizes: tuple[int, ...]) -> None:
        if kind == pb.TRANSFER_KIND_RING_VECTOR:  # the decrypted sum
            if phase.stage != pb.STAGE_AGGREGATE or stage != pb.STAGE_AGGREGATE:
                raise StaleMessage("decrypted aggregate refused at this stage")
            if client not in phase.expected:
                raise InvalidMessage("you were not asked to decrypt this aggregate")
            return self.expect_ring_vector(kind, ring_bits, 64, part_sizes)
        if phase.stage != pb.STAGE_PLAN or stage != pb.STAGE_CIPHERTEXT_UPLOAD:
            raise StaleMessage(f"ciphertext refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        self.refuse_if_declined(client)
        p = self.agg.params
        want, limit = p.chunks_for(self.ctx.payload_length), max_blob_bytes(p.poly_modulus_degree, len(p.data_prime_bit_sizes))
        if (len(part_sizes) != want + 1 or part_sizes[-1] != SIGNATURE_BYTES
                or max(part_sizes[:-1], default=0) > limit):
            raise InvalidMessage(f"a CKKS upload is {want} ciphertexts of at most {limit} bytes each, then the "
                                 f"{SIGNATURE_BYTES}-byte signature")

    def on_ciphertext_upload(self, phase: Phase, client: str, parts: list[bytes]) -> None:
        if phase.stage != pb.STAGE_PLAN:
            raise StaleMessage(f"ciphertext refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        self.refuse_if_declined(client)
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
            raise StaleMessage("decrypted aggregate refused at this stage")
        if client not in phase.expected:
            raise InvalidMessage("you were not asked to decrypt this aggregate")
        self.decrypted[client] = decode_decrypted(data, self.ctx.payload_length)
        phase.responded.add(client)

    def download(self, client: str) -> tuple[int, list[bytes]] | None:
        if self.request_parts is not None and client in self.uploaded:
            return pb.AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM, self.request_parts
        return None

    def on_result(self, phase: Phase, client: str, kind: str | None, req: pb.SubmitResultRequest) -> None:
        if kind != "consistency_signature" or req.header.stage != pb.STAGE_CONSISTENCY_CHECK:
            raise InvalidMessage(f"{kind} is not expected in this aggregation mode")
        if phase.stage != pb.STAGE_CONSISTENCY_CHECK or client not in phase.expected:
            raise StaleMessage("confirmation refused at this stage")
        sig = bytes(req.consistency_signature.signature)
        verify_signature(self.ctx.identity_keys[client], sig,
                         confirmation_payload(self.ctx.plan.plan_sha256, self.ctx.attempt, self.request_digest))
        self.confirmations[client] = sig
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:
        if phase.stage == pb.STAGE_PLAN:
            return self._confirm_phase()
        if phase.stage == pb.STAGE_CONSISTENCY_CHECK:
            return self._decrypt_phase()
        return self._outcome()

    def _confirm_phase(self) -> Phase:
        """Offer every contributor the decryption request: all signed contributions."""
        ctx = self.ctx
        self.require(len(self.uploaded), "clients uploaded ciphertexts")
        names = sorted(self.uploaded)
        self.request_parts = encode_contributions([(c, *self.contributions[c]) for c in names])
        self.request_digest = digest_parts(self.request_parts)
        size = sum(len(p) for p in self.request_parts)
        ready = pb.AggregateReady(total_size=size, sha256=self.request_digest)
        tasks = {c: ctx.task(pb.STAGE_CONSISTENCY_CHECK, aggregate_ready=ready) for c in names}
        return self.open_phase(pb.STAGE_CONSISTENCY_CHECK, tasks, ctx.config.deadlines.decrypt_s, "confirm")

    def _decrypt_phase(self) -> Phase:
        """Hand the confirmations back to those who confirmed: each decrypts once it sees enough."""
        ctx = self.ctx
        confirmed = sorted(self.confirmations)
        self.require(len(confirmed), "members confirmed the decryption request")
        req = pb.DecryptRequest(request_sha256=self.request_digest, confirmations=[
            secagg_pb.ConsistencySignature(client_id=c, signature=self.confirmations[c]) for c in confirmed])
        tasks = {c: ctx.task(pb.STAGE_AGGREGATE, decrypt_request=req) for c in confirmed}
        return self.open_phase(pb.STAGE_AGGREGATE, tasks, ctx.config.deadlines.decrypt_s, "decrypt")

    def _outcome(self) -> RoundOutcome:
        """The decrypted sum, when every decryption returned agrees."""
        ctx = self.ctx
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
