"""CKKS on the member's side: what a decryption request must prove before anything is decrypted.

The member holds the federation's secret key, so a decryption it returns is a decryption oracle
unless it checks *what* it decrypts. It decrypts only a sum it computes itself from at least
``threshold`` contributions that distinct cohort members signed for this plan and attempt, its
own among them (unchanged). A server that sends one member's ciphertext alone, a forged or
replayed contribution, or drops this member's own, gets a ``ProtocolAbort`` and nothing else.
"""

from __future__ import annotations

import hmac

from securefed.crypto.keys import verify_signature
from securefed.errors import CryptoError, ProtocolAbort
from securefed.protocol.ckks import contribution_digest, contribution_payload, decode_contributions
from securefed.transport._generated import federation_pb2 as pb


def checked_contributions(plan: pb.RoundPlan, attempt: int, parts: list[bytes], me: str,
                          own_digest: bytes | None) -> list[tuple[str, list[bytes]]]:
    keys = {m.client_id: bytes(m.identity_public_key) for m in plan.cohort}
    items = decode_contributions(parts)
    names = [c for c, _, _ in items]
    t = int(plan.secagg.threshold)
    if len(set(names)) != len(names) or not set(names) <= set(keys):
        raise ProtocolAbort("decryption request names unknown or repeated contributors")
    if t < 2 or len(names) < t:
        raise ProtocolAbort(f"decryption request has {len(names)} contribution(s), the threshold is {t}: refused")
    if me not in names:
        raise ProtocolAbort("the decryption request does not include this member's contribution")
    out = []
    for c, sig, chunks in items:
        d = contribution_digest(chunks)
        try:
            verify_signature(keys[c], sig, contribution_payload(plan.plan_sha256, attempt, c, d))
        except CryptoError:
            raise ProtocolAbort(f"contribution of {c} is not signed by {c} for this plan") from None
        if c == me and not (own_digest and hmac.compare_digest(d, own_digest)):
            raise ProtocolAbort("the decryption request alters this member's own contribution")
        out.append((c, chunks))
    return out


def check_confirmations(plan: pb.RoundPlan, attempt: int, request_digest: bytes, req: pb.DecryptRequest) -> int:
    """Before decrypting: at least ``threshold`` distinct cohort members confirmed exactly the request
    (contributor set) this member checked. Returns how many did; ``ProtocolAbort`` otherwise."""
    from securefed.protocol.ckks import confirmation_payload

    if not hmac.compare_digest(bytes(req.request_sha256), bytes(request_digest)):
        raise ProtocolAbort("decrypt request is for another contributor set than the one this member confirmed")
    keys = {m.client_id: bytes(m.identity_public_key) for m in plan.cohort}
    t = int(plan.secagg.threshold)
    if 2 * t <= len(keys):
        raise ProtocolAbort(f"threshold {t} is not a strict majority of the {len(keys)} members: refused")
    payload = confirmation_payload(plan.plan_sha256, attempt, request_digest)
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
