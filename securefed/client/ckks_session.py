"""The member's CKKS session: contribute, confirm one contributor set, decrypt only what it checked.

The member holds the federation's secret key, so a decryption it returns is a decryption oracle
unless it checks *what* it decrypts. It decrypts only a sum of at least ``threshold`` contributions
that distinct cohort members signed for this plan and attempt, its own among them (unchanged), whose
tag matches the sum of those contributors' members-only linear tags (``securefed.he.tags``: the
server cannot alter the sum, weight a member or swap in one member's ciphertext), and only after a
``threshold`` of members (a strict majority) confirmed that very contributor set. It downloads the
one sum, never every contribution. A server that sends one member's ciphertext alone, a forged or
replayed contribution, an altered sum, drops this member's own, or asks twice in one attempt, gets
a ``ProtocolAbort``. Message formats: ``securefed.protocol.ckks``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed import he
from securefed.client.member_state import MemberState
from securefed.client.session import RoundSession, SessionDeps
from securefed.crypto.keys import IdentityKeyPair, verify_signature
from securefed.errors import CryptoError, InvalidMessage, ProtocolAbort
from securefed.fsutil import check_secret_file
from securefed.he import tags
from securefed.protocol import ckks as wire
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import secagg_pb2 as secagg_pb


class MemberKey:
    """The federation's secret CKKS context, read once, checked against each plan."""

    def __init__(self, secret_context: Path) -> None:
        check_secret_file(secret_context, "CKKS secret context")  # at start-up: one line, not a late failure
        self.path = secret_context
        self._ctx: he.ClientContext | None = None

    def context_for(self, plan: pb.RoundPlan) -> he.ClientContext:
        if self._ctx is None:
            c = plan.ckks
            name = next((p.name for p in he.PARAMETER_SETS.values()
                         if p.poly_modulus_degree == c.poly_modulus_degree
                         and tuple(p.coeff_mod_bit_sizes) == tuple(c.coeff_mod_bit_sizes)
                         and p.global_scale_bits == c.global_scale_bits), None)
            if name is None:
                raise ProtocolAbort("the plan names CKKS parameters this client does not know")
            # SEAL work on every core for LLM-sized vectors (he.parallel); small ones stay in process.
            self._ctx = he.ParallelClientContext.load(self.path, name)
        if not hmac.compare_digest(hashlib.sha256(self._ctx.public_bytes()).digest(),
                                   bytes(plan.ckks.public_context_sha256)):
            raise ProtocolAbort("the server's CKKS context is not this federation's (public context digest differs)")
        return self._ctx


def make_contribution(ctx: he.ClientContext, identity: IdentityKeyPair, plan_sha256: bytes, attempt: int, name: str,
                      payload: np.ndarray) -> tuple[wire.Contribution, list[bytes]]:
    """(this member's entry as a request must list it, the upload parts): the update encrypted, its
    linear tag sealed for members, and the identity signature over c0, seeds and sealed tag."""
    enc = ctx.encrypt(np.asarray(payload, dtype=np.float64))
    keys = ctx.attempt_keys(plan_sha256, attempt)
    sealed = tags.seal_tag(keys, ctx.contribution_tag(enc, keys), plan_sha256=plan_sha256, attempt=attempt, client=name)
    c0_sha = hashlib.sha256(enc.c0).digest()
    sig = identity.sign(wire.contribution_payload(plan_sha256, attempt, name, c0_sha, hashlib.sha256(enc.seeds).digest(),
                                                  sealed))
    return wire.Contribution(name, c0_sha, enc.seeds, sealed, sig), wire.encode_upload(enc.c0, enc.seeds, sealed, sig)


def checked_contributions(plan: pb.RoundPlan, attempt: int, parts: list[bytes], me: str,
                          own: wire.Contribution | None) -> tuple[list[wire.Contribution], bytes]:
    """The decryption request's contributions and the sum's c0, once each contribution is signed by
    a distinct cohort member for this plan and attempt, there are at least ``threshold``, and this
    member's own is there unchanged. (The sum itself is checked against the tags by the caller.)"""
    keys = {m.client_id: bytes(m.identity_public_key) for m in plan.cohort}
    items, sum_c0 = wire.decode_request(parts)
    names = [c.client for c in items]
    t = int(plan.secagg.threshold)
    if len(set(names)) != len(names) or not set(names) <= set(keys):
        raise ProtocolAbort("decryption request names unknown or repeated contributors")
    if t < 2 or len(names) < t:
        raise ProtocolAbort(f"decryption request has {len(names)} contribution(s), the threshold is {t}: refused")
    if me not in names:
        raise ProtocolAbort("the decryption request does not include this member's contribution")
    for c in items:
        try:
            verify_signature(keys[c.client], c.signature, wire.signed_payload(plan.plan_sha256, attempt, c))
        except CryptoError:
            raise ProtocolAbort(f"contribution of {c.client} is not signed by {c.client} for this plan") from None
        if c.client == me and c != own:
            raise ProtocolAbort("the decryption request alters this member's own contribution")
    return items, sum_c0


def check_sum(ctx: he.ClientContext, plan: pb.RoundPlan, attempt: int, items: list[wire.Contribution],
              sum_c0: bytes) -> he.EncryptedSum:
    """The sum, once its linear tag equals the sum of the contributors' tags; ProtocolAbort otherwise."""
    try:
        total = he.EncryptedSum.from_parts(ctx.params, sum_c0, [c.seeds for c in items], int(plan.vector_length))
    except InvalidMessage as exc:
        raise ProtocolAbort(f"malformed aggregate in the decryption request: {exc}") from None
    keys = ctx.attempt_keys(plan.plan_sha256, attempt)
    contributor_tags = []
    for c in items:
        try:
            contributor_tags.append(tags.open_tag(keys, c.sealed_tag, ctx.primes, plan_sha256=plan.plan_sha256,
                                                  attempt=attempt, client=c.client))
        except CryptoError:
            raise ProtocolAbort(f"the tag of {c.client} was not sealed by a member for this attempt: refused") from None
    try:
        matches = ctx.sum_matches(total, contributor_tags, keys)
    except InvalidMessage as exc:
        raise ProtocolAbort(f"malformed aggregate in the decryption request: {exc}") from None
    if not matches:
        raise ProtocolAbort("the aggregate's tag does not match its contributors' tags: it is not their sum; "
                            "refusing to decrypt")
    return total


def check_confirmations(plan: pb.RoundPlan, attempt: int, request_digest: bytes, req: pb.DecryptRequest) -> int:
    """Before decrypting: at least ``threshold`` distinct cohort members confirmed exactly the request
    (contributor set) this member checked. Returns how many did; ``ProtocolAbort`` otherwise."""
    if not hmac.compare_digest(bytes(req.request_sha256), bytes(request_digest)):
        raise ProtocolAbort("decrypt request is for another contributor set than the one this member confirmed")
    keys = {m.client_id: bytes(m.identity_public_key) for m in plan.cohort}
    t = int(plan.secagg.threshold)
    if 2 * t <= len(keys):
        raise ProtocolAbort(f"threshold {t} is not a strict majority of the {len(keys)} members: refused")
    payload = wire.confirmation_payload(plan.plan_sha256, attempt, request_digest)
    good = set()
    for c in req.confirmations:
        if c.client_id in good or c.client_id not in keys:
            raise ProtocolAbort("decrypt request carries unknown or repeated confirmations")
        try:
            verify_signature(keys[c.client_id], bytes(c.signature), payload)
        except CryptoError:
            raise ProtocolAbort(f"confirmation of {c.client_id} does not verify for this request") from None
        good.add(c.client_id)
    if len(good) < t:
        raise ProtocolAbort(f"only {len(good)} members confirmed this contributor set, the threshold is {t}: refused")
    return len(good)


@dataclass(frozen=True)
class ConfirmedRequest:
    """The one contributor set this member confirmed in an attempt, and the sum it checked."""

    digest: bytes
    total: he.EncryptedSum


class CkksSession:
    def __init__(self, deps: SessionDeps, session: RoundSession, key: MemberKey, state: MemberState) -> None:
        self.deps = deps
        self.s = session
        self.state = state  # one confirmed contributor set per attempt, across sessions and restarts
        self.ctx = key.context_for(session.plan)
        self.own: wire.Contribution | None = None
        self.confirmed: ConfirmedRequest | None = None
        self.decrypted = False

    def contribute(self, payload: np.ndarray) -> None:
        """Encrypt the update, tag it, seal the tag, sign it all for this plan and attempt, record, upload."""
        s = self.s
        self.own, parts = make_contribution(self.ctx, self.deps.identity, s.plan_digest, s.attempt, self.deps.name,
                                            payload)
        self.deps.record_release(s, payload)
        header = self.deps.connection.header(s.attempt, wire.CkksStage.CONTRIBUTE.wire_stage)
        self.deps.connection.upload_ciphertext(header, parts)
        s.released = True

    def confirm(self, announced_digest: bytes, parts: list[bytes]) -> None:
        """Check the decryption request (>= t signed contributions, own included, the sum's tag) and confirm it."""
        s = self.s
        digest = wire.digest_parts(parts)
        if not hmac.compare_digest(digest, announced_digest):
            raise ProtocolAbort("decryption request does not match its announced digest")
        if self.confirmed is not None:
            raise ProtocolAbort("a second decryption request in one attempt: refused (one contributor set per attempt)")
        items, sum_c0 = checked_contributions(s.plan, s.attempt, parts, self.deps.name, self.own)
        total = check_sum(self.ctx, s.plan, s.attempt, items, sum_c0)
        self.state.confirm_once(s.attempt, digest)
        self.confirmed = ConfirmedRequest(digest, total)
        sig = self.deps.identity.sign(wire.confirmation_payload(s.plan_digest, s.attempt, digest))
        self.deps.connection.submit(self.deps.connection.header(s.attempt, wire.CkksStage.CONFIRM.wire_stage),
                                    consistency_signature=secagg_pb.ConsistencySignature(client_id=self.deps.name,
                                                                                         signature=sig))

    def decrypt(self, req: pb.DecryptRequest) -> None:
        """Decrypt the confirmed sum, only once >= t members confirmed the same contributor set."""
        got = self.confirmed
        if got is None or self.decrypted:
            return
        s = self.s
        check_confirmations(s.plan, s.attempt, got.digest, req)
        # Every decryptor draws the same flooding noise (members-only key), so averaging gains nothing.
        total = self.ctx.decrypt(got.total, noise_key=self.ctx.attempt_keys(s.plan_digest, s.attempt).flood)
        self.deps.fault("before_decrypt_upload", s.attempt)
        header = self.deps.connection.header(s.attempt, wire.CkksStage.DECRYPT.wire_stage)
        self.deps.connection.upload_masked(header, wire.DECRYPTED_BITS, wire.encode_decrypted(total))
        self.decrypted = True
