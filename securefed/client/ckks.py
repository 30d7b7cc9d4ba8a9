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
from securefed.server.drivers import contribution_digest, contribution_payload, decode_contributions
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
