"""Session identity, the SecAgg+ neighbour graph, and the byte strings that get signed.

Everything here is deterministic and public: both sides compute it from what they saw, and a
difference anywhere (a plan, a key, a survivor list) changes a hash and aborts the round.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from securefed import PROTOCOL_VERSION
from securefed.secagg.messages import AdvertisedKeys, CohortMember

PLAN_DOMAIN = b"securefed/secagg/plan/v1"
SESSION_DOMAIN = b"securefed/secagg/session/v2"
ADVERTISE_DOMAIN = b"securefed/secagg/advertise/v2"
INBOX_DOMAIN = b"securefed/secagg/inbox/v1"
SHARE_DOMAIN = b"securefed/secagg/shares/v1"
SHARE_LEAF_DOMAIN = b"securefed/secagg/share-leaf/v1"
COMPLAINT_DOMAIN = b"securefed/secagg/complaint/v1"
CONSISTENCY_DOMAIN = b"securefed/secagg/consistency/v2"
MASKED_WITH_DOMAIN = b"securefed/secagg/masked-with/v1"
GRAPH_DOMAIN = b"securefed/secagg/graph/v1"
SELF_MASK_PURPOSE = b"securefed/self-mask/v1"


def _u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def encode_fields(*parts: bytes | int | float) -> bytes:
    """Unambiguous concatenation: every part is length-prefixed (ints 8-byte BE, floats IEEE BE)."""
    out = bytearray()
    for p in parts:
        if isinstance(p, bool):
            raise TypeError("bool is not a protocol field")
        if isinstance(p, int):
            b = _u64(p)
        elif isinstance(p, float):
            b = struct.pack(">d", p)
        else:
            b = bytes(p)
        out += _u64(len(b)) + b
    return bytes(out)


def plan_digest(*, round_id: int, plan: bytes, model_hash: bytes, vector_length: int, threshold: int,
                neighbour_degree: int, ring_bits: int, frac_bits: int, clip: float,
                cohort: Sequence[CohortMember]) -> bytes:
    """SHA-256 of the protocol version and the whole plan, cohort included (sorted by id)."""
    members = sorted(cohort, key=lambda m: m.client_id)
    body = encode_fields(PLAN_DOMAIN, PROTOCOL_VERSION, round_id, plan, model_hash, vector_length, threshold,
                         neighbour_degree, ring_bits, frac_bits, float(clip), len(members))
    body += b"".join(encode_fields(m.client_id, m.identity_key) for m in members)
    return hashlib.sha256(body).digest()


def session_id(plan_digest_: bytes, keys: Iterable[AdvertisedKeys]) -> bytes:
    """SHA-256 of the plan digest and ALL round public keys, sorted by client id.

    The plan digest already covers protocol version, round id, plan, model hash and cohort.
    """
    ks = sorted(keys, key=lambda k: k.client_id)
    body = encode_fields(SESSION_DOMAIN, plan_digest_, len(ks))
    body += b"".join(encode_fields(k.client_id, k.c_pk, k.s_pk, k.inbox_root) for k in ks)
    return hashlib.sha256(body).digest()


def advertise_payload(plan_digest_: bytes, client_id: int, c_pk: bytes, s_pk: bytes, inbox_root: bytes) -> bytes:
    """What a client signs with its identity key when it advertises its round keys."""
    return encode_fields(ADVERTISE_DOMAIN, plan_digest_, client_id, c_pk, s_pk, inbox_root)


def inbox_peers(cohort_ids: Sequence[int], owner: int) -> list[int]:
    """The members ``owner`` keeps an inbox key for: every other cohort member, in id order (the
    Merkle leaves' order)."""
    return [c for c in sorted(cohort_ids) if c != owner]


def inbox_leaf(peer: int, key: bytes) -> bytes:
    """The Merkle leaf of the inbox key an owner keeps for ``peer``."""
    return encode_fields(INBOX_DOMAIN, peer, key)


def share_leaf(receiver: int, sender_c_pk: bytes, inbox_key: bytes, inbox_root: bytes, ciphertext: bytes) -> bytes:
    """One leaf of a sender's share tree: everything that fixes how the ciphertext for ``receiver`` must
    decrypt (the sender's c_pk, the receiver's inbox key for it and the root that key is proven under) and
    the ciphertext. The sender signs the root of its leaves in receiver order (``shares_payload``)."""
    return encode_fields(SHARE_LEAF_DOMAIN, receiver, sender_c_pk, inbox_key, inbox_root,
                         hashlib.sha256(ciphertext).digest())


def shares_payload(session_id_: bytes, sender: int, root: bytes) -> bytes:
    """What a sender signs once for all its encrypted shares: the root of its share tree. A share that is
    in the tree and then fails to decrypt under the receiver's revealed inbox key is the sender's doing."""
    return encode_fields(SHARE_DOMAIN, session_id_, sender, root)


def complaint_payload(session_id_: bytes, complainer: int, accused: int, inbox_private: bytes,
                      ciphertext: bytes) -> bytes:
    """What a complainer signs: it accuses ``accused`` of this ciphertext and reveals this key for it."""
    return encode_fields(COMPLAINT_DOMAIN, session_id_, complainer, accused, inbox_private,
                         hashlib.sha256(ciphertext).digest())


def consistency_payload(session_id_: bytes, share_senders: Sequence[int], survivors: Sequence[int]) -> bytes:
    """What a client signs in the consistency round: every set it acted on. U2 (who sent shares; its
    neighbours among them are exactly those whose shares it received) and U3 (who sent masked input)."""
    return encode_fields(CONSISTENCY_DOMAIN, session_id_, len(share_senders), *share_senders,
                         len(survivors), *survivors)


def masked_with_payload(session_id_: bytes, client_id: int, partners: Sequence[int]) -> bytes:
    """What a client signs with its masked input: the neighbours whose shares it received, i.e. the
    pairwise masks in its input. A holder reveals that client's self-mask share only if it is listed."""
    return encode_fields(MASKED_WITH_DOMAIN, session_id_, client_id, len(partners), *partners)


# ---- neighbour graph ------------------------------------------------------------------------------

def _uniform_below(seed: bytes, counter: int, bound: int) -> tuple[int, int]:
    """A uniform integer in [0, bound) from SHA-256(seed || counter), by rejection; returns (value, next counter)."""
    limit = (1 << 64) - ((1 << 64) % bound)
    while True:
        v = int.from_bytes(hashlib.sha256(seed + _u64(counter)).digest()[:8], "big")
        counter += 1
        if v < limit:
            return v % bound, counter


def permutation(session_id_: bytes, client_ids: Sequence[int]) -> list[int]:
    """Fisher-Yates shuffle of the sorted ids driven by SHA-256 of the session id.

    The server cannot pick edges, only influence them through which keys it keeps and by retrying
    rounds; the client daemon bounds both (see protocols/secagg.md)."""
    order = sorted(client_ids)
    seed = hashlib.sha256(GRAPH_DOMAIN + session_id_).digest()
    counter = 0
    for i in range(len(order) - 1, 0, -1):
        j, counter = _uniform_below(seed, counter, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


@dataclass(frozen=True)
class NeighbourGraph:
    """The SecAgg+ graph over U1: a Harary graph H(k, n) on a session-seeded permutation of the ids.

    Position p is joined to positions p +- 1 .. p +- k/2 (mod n); k = n - 1 gives the complete graph.
    ``holders(u)`` (u's neighbours and u itself, sorted) hold Shamir shares of u's secrets; the
    share of holder v has x = 1 + its index in that list.
    """

    neighbours: Mapping[int, frozenset[int]]
    _holders: Mapping[int, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)
    _x: Mapping[int, Mapping[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Precomputed once: the server looks these up for every share it receives.
        holders = {u: tuple(sorted(vs | {u})) for u, vs in self.neighbours.items()}
        object.__setattr__(self, "_holders", holders)
        object.__setattr__(self, "_x", {u: {h: i + 1 for i, h in enumerate(hs)} for u, hs in holders.items()})

    @classmethod
    def build(cls, session_id_: bytes, client_ids: Sequence[int], degree: int) -> "NeighbourGraph":
        n = len(client_ids)
        ids = sorted(client_ids)
        if degree >= n - 1:
            every = frozenset(ids)
            return cls({u: every - {u} for u in ids})
        if degree % 2 or degree < 2:
            raise ValueError("degree must be even and >= 2")
        order = permutation(session_id_, ids)
        half = degree // 2
        nbrs: dict[int, frozenset[int]] = {}
        for p, u in enumerate(order):
            nbrs[u] = frozenset(order[(p + j) % n] for j in range(-half, half + 1) if j != 0)
        return cls(nbrs)

    def __contains__(self, u: int) -> bool:
        return u in self.neighbours

    def of(self, u: int) -> frozenset[int]:
        return self.neighbours[u]

    def holders(self, u: int) -> tuple[int, ...]:
        return self._holders[u]

    def holds(self, holder: int, owner: int) -> bool:
        """Whether ``holder`` holds a share of ``owner``'s secrets."""
        return owner in self._x and holder in self._x[owner]

    def share_x(self, owner: int, holder: int) -> int:
        """The Shamir x-coordinate of ``holder``'s share of ``owner``'s secrets."""
        return self._x[owner][holder]
