"""The ckks mode as a coordinator driver: add signed ciphertexts, let the members decrypt the sum.

The server holds only the federation's public CKKS context (no secret key): it checks and adds
ciphertexts as they arrive (one running sum: memory O(d), not O(N d)), hands the members one
decryption request holding that sum, and applies their decryption of it. The messages and what
each party signs are ``securefed.protocol.ckks``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from securefed import he
from securefed.crypto.keys import verify_signature
from securefed.errors import InvalidMessage, ProtocolAbort, StaleMessage
from securefed.he.vector import c0_bytes, seeds_bytes
from securefed.protocol.ckks import (
    DECRYPTED_BITS,
    MAX_SEALED_TAG_BYTES,
    SIGNATURE_BYTES,
    UPLOAD_PARTS,
    Contribution,
    confirmation_payload,
    contribution_payload,
    decode_decrypted,
    digest_parts,
    encode_request,
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

    1. *Confirm.* Every uploader downloads the decryption request: the sum's c0, and per contributor
       its signature, c1 seeds and members-only sealed tag. It checks that at least ``threshold``
       distinct cohort members signed for this plan and attempt, its own included and unchanged, and
       that the sum's linear tag equals the sum of their tags (so the server sent exactly their sum),
       then signs the request's digest. An honest member confirms one request per attempt.
    2. *Decrypt.* The server hands the confirmations back. A member decrypts only when at least
       ``threshold`` distinct cohort members confirmed the very request it checked; with the threshold
       a strict majority of the cohort, two different contributor sets cannot both be confirmed, so
       the server cannot obtain two sums over different sets and take their difference.

    The server applies the decrypted SUM only when all decryptions agree to within the CKKS noise, so
    one lying decryptor aborts the round rather than steering the model. Cost: a decryptor downloads
    one sum (c0) and every contributor's seeds (65 bytes per 4096 parameters each).
    """

    AGREEMENT_TOL = 1e-3

    def __init__(self, ctx: AttemptContext, server_ctx: he.ServerContext) -> None:
        super().__init__(ctx)
        self.agg = he.ServerAggregator(server_ctx, ctx.payload_length)
        self.uploaded: list[str] = []
        self.contributions: dict[str, Contribution] = {}  # signatures, seeds and sealed tags: no c0 kept
        self.request_parts: list[bytes] | None = None
        self.request_digest = b""
        self.confirmations: dict[str, bytes] = {}
        # The first decryption returned, and who returned which: every later one is compared with it on
        # arrival and dropped, so the server holds one decrypted vector, not one per decryptor.
        self.reference: np.ndarray | None = None
        self.decrypted: list[str] = []
        self.disagreed: list[str] = []

    def first_phase(self) -> Phase:
        return self.plan_phase()

    def check_upload(self, phase: Phase, client: str, kind: int, stage: int, ring_bits: int,
                     part_sizes: tuple[int, ...]) -> None:
        if kind == pb.TRANSFER_KIND_RING_VECTOR:  # the decrypted sum
            if phase.stage != pb.STAGE_AGGREGATE or stage != pb.STAGE_AGGREGATE:
                raise StaleMessage("decrypted aggregate refused at this stage")
            if client not in phase.expected:
                raise InvalidMessage("you were not asked to decrypt this aggregate")
            return self.expect_ring_vector(kind, ring_bits, DECRYPTED_BITS, part_sizes)
        if phase.stage != pb.STAGE_PLAN or stage != pb.STAGE_CIPHERTEXT_UPLOAD:
            raise StaleMessage(f"ciphertext refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        self.refuse_if_declined(client)
        p, length = self.agg.params, self.ctx.payload_length
        c0_size, seeds_size = c0_bytes(p, length), seeds_bytes(p, length)
        if (len(part_sizes) != UPLOAD_PARTS or part_sizes[0] != c0_size or part_sizes[1] != seeds_size
                or not 0 < part_sizes[2] <= MAX_SEALED_TAG_BYTES or part_sizes[3] != SIGNATURE_BYTES):
            raise InvalidMessage(f"a CKKS upload is [c0 of {c0_size} bytes, seeds of {seeds_size} bytes, a sealed tag of "
                                 f"at most {MAX_SEALED_TAG_BYTES} bytes, the {SIGNATURE_BYTES}-byte signature]")

    def on_ciphertext_upload(self, phase: Phase, client: str, parts: list[bytes]) -> None:
        if phase.stage != pb.STAGE_PLAN:
            raise StaleMessage(f"ciphertext refused: the round is at stage {pb.Stage.Name(phase.stage)}")
        self.refuse_if_declined(client)
        up = split_upload(parts)
        c0_sha, seeds_sha = hashlib.sha256(up.c0).digest(), hashlib.sha256(up.seeds).digest()
        verify_signature(self.ctx.identity_keys[client], up.signature,
                         contribution_payload(self.ctx.plan.plan_sha256, self.ctx.attempt, client, c0_sha, seeds_sha,
                                              up.sealed_tag))
        vec = he.EncryptedVector.from_parts(self.agg.params, up.c0, up.seeds, self.ctx.payload_length)
        self.agg.add(vec, sender=client)  # validates every coefficient before the sum keeps any of it
        self.contributions[client] = Contribution(client, c0_sha, up.seeds, up.sealed_tag, up.signature)
        self.uploaded.append(client)
        phase.responded.add(client)

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        if phase.stage != pb.STAGE_AGGREGATE or stage != pb.STAGE_AGGREGATE:
            raise StaleMessage("decrypted aggregate refused at this stage")
        if client not in phase.expected:
            raise InvalidMessage("you were not asked to decrypt this aggregate")
        if ring_bits != DECRYPTED_BITS:
            raise InvalidMessage(f"a decrypted aggregate travels as float32 (ring_bits {DECRYPTED_BITS}), not {ring_bits}")
        values = decode_decrypted(data, self.ctx.payload_length)
        if self.reference is None:
            self.reference = values
        elif float(np.max(np.abs(values - self.reference), initial=0.0)) > self.AGREEMENT_TOL:
            self.disagreed.append(client)
        self.decrypted.append(client)
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
        """Offer every contributor the decryption request: the sum and who is in it."""
        ctx = self.ctx
        self.require(len(self.uploaded), "clients uploaded ciphertexts")
        names = sorted(self.uploaded)
        total = self.agg.result(names)
        self.agg.close()  # the packed sum in the request is all that is kept
        self.request_parts = encode_request([self.contributions[c] for c in names], total.c0)
        self.request_digest = digest_parts(self.request_parts)
        size = sum(len(p) for p in self.request_parts)
        ready = pb.AggregateReady(total_size=size, sha256=self.request_digest)
        tasks = {c: ctx.task(pb.STAGE_CONSISTENCY_CHECK, aggregate_ready=ready) for c in names}
        return self.open_phase(pb.STAGE_CONSISTENCY_CHECK, tasks, "decrypt_s", "confirm")

    def _decrypt_phase(self) -> Phase:
        """Hand the confirmations back to those who confirmed: each decrypts once it sees enough."""
        ctx = self.ctx
        confirmed = sorted(self.confirmations)
        self.require(len(confirmed), "members confirmed the decryption request")
        req = pb.DecryptRequest(request_sha256=self.request_digest, confirmations=[
            secagg_pb.ConsistencySignature(client_id=c, signature=self.confirmations[c]) for c in confirmed])
        tasks = {c: ctx.task(pb.STAGE_AGGREGATE, decrypt_request=req) for c in confirmed}
        return self.open_phase(pb.STAGE_AGGREGATE, tasks, "decrypt_s", "decrypt")

    def _outcome(self) -> RoundOutcome:
        """The decrypted sum, when every decryption returned agrees."""
        ctx = self.ctx
        if self.reference is None:
            raise ProtocolAbort("no client returned the decrypted aggregate")
        if self.disagreed:
            raise ProtocolAbort("decryptions of the aggregate disagree: a decryptor lied or erred; nothing applied")
        # Every decryptor of the attempt adds the same flooding noise (protocols/ckks.md section 5), so the
        # agreeing decryptions are one value: averaging them would gain nothing.
        sums = self.reference
        # CKKS decryption (and its flooding noise) is approximate: a true sum at the edge of the
        # range can come back a hair outside it. Clamping to the range is post-processing.
        lim = len(self.uploaded) * ctx.config.payload_bound()
        sums = np.clip(sums, -lim, lim)
        # Decryptors that stayed silent did contribute; they are not dropouts of the sum.
        ctx.dropouts.difference_update(self.uploaded)
        return RoundOutcome(sums, tuple(sorted(self.uploaded)), tuple(sorted(ctx.dropouts)))
