"""Protobuf <-> secure-aggregation dataclasses, both directions, for both daemons.

The secagg state machines number clients 1..n (``plan.cohort_ids``); the wire names them by their
certificate names. Session ids travel in ``Task.session_id`` / ``RequestHeader.session_id``.
Every conversion validates shapes first; a bad message is ``InvalidMessage``, never a crash.
"""

from __future__ import annotations

import numpy as np

from securefed import secagg as sa
from securefed.errors import InvalidMessage
from securefed.protocol.plan import CohortIds, plan_bytes
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import secagg_pb2 as spb

RING_DTYPES = {32: np.dtype("<u4"), 64: np.dtype("<u8")}


def round_setup(plan: pb.RoundPlan, ids: CohortIds, session_digest: bytes) -> sa.RoundSetup:
    """The secagg RoundSetup both sides derive from the plan (``session_digest`` = plan digest)."""
    s = plan.secagg
    return sa.RoundSetup(
        session_id=session_digest, stage=sa.Stage.ADVERTISE_KEYS, round_id=int(plan.round), plan=plan_bytes(plan),
        model_hash=bytes(plan.global_adapter_sha256), vector_length=int(plan.vector_length), threshold=int(s.threshold),
        neighbour_degree=int(s.neighbours), ring_bits=int(s.ring_bits), frac_bits=int(s.frac_bits), clip=float(s.clip),
        cohort=tuple(sa.CohortMember(ids.int_of(m.client_id), bytes(m.identity_public_key))
                     for m in sorted(plan.cohort, key=lambda m: m.client_id)),
    )


# ---- client -> server ----------------------------------------------------------------------------

def advertise_from_pb(m: spb.AdvertiseKeys, session: bytes, ids: CohortIds) -> sa.AdvertiseKeys:
    return sa.AdvertiseKeys(session_id=bytes(session), stage=sa.Stage.ADVERTISE_KEYS, client_id=ids.int_of(m.client_id),
                            c_pk=bytes(m.c_pk), s_pk=bytes(m.s_pk), signature=bytes(m.signature),
                            inbox_root=bytes(m.inbox_root), inbox_keys=tuple(bytes(k) for k in m.inbox_keys))


def advertise_to_pb(m: sa.AdvertiseKeys | sa.AdvertisedKeys, ids: CohortIds) -> spb.AdvertiseKeys:
    # In a key broadcast (AdvertisedKeys) only the root travels; members get their own inbox keys apart.
    return spb.AdvertiseKeys(client_id=ids.name_of(m.client_id), c_pk=m.c_pk, s_pk=m.s_pk, signature=m.signature,
                             inbox_root=m.inbox_root, inbox_keys=list(getattr(m, "inbox_keys", ())))


def _enc_share_from_pb(s: spb.EncryptedShare, ids: CohortIds) -> sa.EncryptedShare:
    return sa.EncryptedShare(ids.int_of(s.from_client_id), ids.int_of(s.to_client_id), bytes(s.ciphertext),
                             bytes(s.signature), tuple(bytes(h) for h in s.proof))


def share_keys_from_pb(m: spb.ShareKeys, session: bytes, ids: CohortIds) -> sa.ShareKeys:
    shares = tuple(_enc_share_from_pb(s, ids) for s in m.shares)
    return sa.ShareKeys(session_id=bytes(session), stage=sa.Stage.SHARE_KEYS, client_id=ids.int_of(m.client_id), shares=shares,
                        signature=bytes(m.signature))


def share_keys_to_pb(m: sa.ShareKeys, ids: CohortIds) -> spb.ShareKeys:
    return spb.ShareKeys(client_id=ids.name_of(m.client_id), shares=[_enc_share_to_pb(s, ids) for s in m.shares],
                         signature=m.signature)


def _enc_share_to_pb(s: sa.EncryptedShare, ids: CohortIds) -> spb.EncryptedShare:
    return spb.EncryptedShare(from_client_id=ids.name_of(s.sender), to_client_id=ids.name_of(s.receiver),
                              ciphertext=s.ciphertext, signature=s.signature, proof=list(s.proof))


def complaints_to_pb(complaints: tuple[sa.ShareComplaint, ...], ids: CohortIds) -> list[spb.SecAggShareComplaint]:
    return [spb.SecAggShareComplaint(accused_client_id=ids.name_of(c.accused), ciphertext=c.ciphertext,
                                     share_signature=c.share_signature, inbox_private_key=c.inbox_private,
                                     signature=c.signature, share_proof=list(c.share_proof)) for c in complaints]


def complaints_from_pb(m: spb.SecAggMaskedWith, ids: CohortIds) -> tuple[sa.ShareComplaint, ...]:
    return tuple(sorted((sa.ShareComplaint(ids.int_of(c.accused_client_id), bytes(c.ciphertext), bytes(c.share_signature),
                                           bytes(c.inbox_private_key), bytes(c.signature),
                                           tuple(bytes(h) for h in c.share_proof)) for c in m.complaints),
                        key=lambda c: c.accused))


def masked_from_bytes(data: bytes, ring_bits: int, expected_len: int, session: bytes, client: int,
                      signature: bytes, complaints: tuple[sa.ShareComplaint, ...] = ()) -> sa.MaskedInput:
    dt = RING_DTYPES.get(ring_bits)
    if dt is None:
        raise InvalidMessage(f"ring_bits must be 32 or 64, got {ring_bits}")
    if len(data) != expected_len * dt.itemsize:
        raise InvalidMessage(f"masked input is {len(data)} bytes, the round expects {expected_len * dt.itemsize}")
    vec = np.frombuffer(data, dtype=dt).astype(dt.newbyteorder("="), copy=True)
    return sa.MaskedInput(session_id=bytes(session), stage=sa.Stage.MASKED_INPUT, client_id=client, masked=vec,
                          signature=bytes(signature), complaints=complaints)


def masked_with_to_pb(m: sa.MaskedInput | sa.MaskedWith, ids: CohortIds) -> spb.SecAggMaskedWith:
    return spb.SecAggMaskedWith(client_id=ids.name_of(m.client_id), signature=m.signature,
                                complaints=complaints_to_pb(getattr(m, "complaints", ()), ids))


def masked_to_bytes(m: sa.MaskedInput) -> tuple[int, bytes]:
    bits = m.masked.dtype.itemsize * 8
    return bits, np.ascontiguousarray(m.masked, dtype=RING_DTYPES[bits]).tobytes()


def consistency_from_pb(m: spb.ConsistencySignature, session: bytes, ids: CohortIds) -> sa.ConsistencySignature:
    return sa.ConsistencySignature(session_id=bytes(session), stage=sa.Stage.CONSISTENCY,
                                   client_id=ids.int_of(m.client_id), signature=bytes(m.signature))


def consistency_to_pb(m: sa.ConsistencySignature, ids: CohortIds) -> spb.ConsistencySignature:
    return spb.ConsistencySignature(client_id=ids.name_of(m.client_id), signature=m.signature)


def unmask_from_pb(m: spb.UnmaskResponse, session: bytes, ids: CohortIds) -> sa.UnmaskResponse:
    return sa.UnmaskResponse(
        session_id=bytes(session), stage=sa.Stage.UNMASK, client_id=ids.int_of(m.client_id),
        self_mask_shares=tuple(sa.RevealedShare(ids.int_of(s.owner_client_id), bytes(s.share)) for s in m.self_mask_shares),
        key_shares=tuple(sa.RevealedShare(ids.int_of(s.owner_client_id), bytes(s.share)) for s in m.mask_key_shares),
    )


def unmask_to_pb(m: sa.UnmaskResponse, ids: CohortIds) -> spb.UnmaskResponse:
    return spb.UnmaskResponse(
        client_id=ids.name_of(m.client_id),
        self_mask_shares=[spb.KeyShare(owner_client_id=ids.name_of(s.owner), share=s.share) for s in m.self_mask_shares],
        mask_key_shares=[spb.KeyShare(owner_client_id=ids.name_of(s.owner), share=s.share) for s in m.key_shares],
    )


# ---- server -> client ----------------------------------------------------------------------------

def key_broadcast_to_pb(m: sa.KeyBroadcast, ids: CohortIds) -> spb.KeyBroadcast:
    return spb.KeyBroadcast(session_id=m.session_id, keys=[advertise_to_pb(k, ids) for k in m.keys],
                            inbox_keys=[spb.SecAggInboxKey(owner_client_id=ids.name_of(k.owner), key=k.key, proof=list(k.proof))
                                        for k in m.inbox_keys])


def key_broadcast_from_pb(m: spb.KeyBroadcast, ids: CohortIds) -> sa.KeyBroadcast:
    keys = sorted((sa.AdvertisedKeys(ids.int_of(k.client_id), bytes(k.c_pk), bytes(k.s_pk), bytes(k.signature),
                                     bytes(k.inbox_root)) for k in m.keys), key=lambda k: k.client_id)
    inbox = sorted((sa.InboxKey(ids.int_of(k.owner_client_id), bytes(k.key), tuple(bytes(h) for h in k.proof))
                    for k in m.inbox_keys), key=lambda k: k.owner)
    return sa.KeyBroadcast(session_id=bytes(m.session_id), stage=sa.Stage.SHARE_KEYS, keys=tuple(keys),
                           inbox_keys=tuple(inbox))


def share_delivery_to_pb(m: sa.ShareDelivery, ids: CohortIds) -> spb.ShareDelivery:
    return spb.ShareDelivery(shares=[_enc_share_to_pb(s, ids) for s in m.shares])


def share_delivery_from_pb(m: spb.ShareDelivery, session: bytes, recipient: int, ids: CohortIds) -> sa.ShareDelivery:
    shares = tuple(_enc_share_from_pb(s, ids) for s in m.shares)
    return sa.ShareDelivery(session_id=bytes(session), stage=sa.Stage.MASKED_INPUT, recipient=recipient, shares=shares)


def survivors_to_pb(m: sa.SurvivorList, ids: CohortIds) -> spb.SurvivorList:
    return spb.SurvivorList(survivors=[ids.name_of(i) for i in m.survivors],
                            share_senders=[ids.name_of(i) for i in m.share_senders],
                            masked_with=[masked_with_to_pb(w, ids) for w in m.masked_with])


def survivors_from_pb(m: spb.SurvivorList, session: bytes, ids: CohortIds) -> sa.SurvivorList:
    attested = sorted((sa.MaskedWith(ids.int_of(w.client_id), bytes(w.signature)) for w in m.masked_with),
                      key=lambda w: w.client_id)
    return sa.SurvivorList(session_id=bytes(session), stage=sa.Stage.CONSISTENCY,
                           survivors=tuple(sorted(ids.int_of(s) for s in m.survivors)),
                           share_senders=tuple(sorted(ids.int_of(s) for s in m.share_senders)),
                           masked_with=tuple(attested))


def unmask_request_to_pb(m: sa.UnmaskRequest, ids: CohortIds) -> spb.UnmaskRequest:
    return spb.UnmaskRequest(
        survivors=[ids.name_of(i) for i in m.survivors], dropped=[ids.name_of(i) for i in m.dropped],
        signatures=[spb.ConsistencySignature(client_id=ids.name_of(s.client_id), signature=s.signature) for s in m.signatures],
    )


def unmask_request_from_pb(m: spb.UnmaskRequest, session: bytes, ids: CohortIds) -> sa.UnmaskRequest:
    sigs = sorted((sa.SignedSurvivors(ids.int_of(s.client_id), bytes(s.signature)) for s in m.signatures),
                  key=lambda s: s.client_id)
    return sa.UnmaskRequest(
        session_id=bytes(session), stage=sa.Stage.UNMASK, survivors=tuple(sorted(ids.int_of(s) for s in m.survivors)),
        dropped=tuple(sorted(ids.int_of(s) for s in m.dropped)), signatures=tuple(sigs),
    )
