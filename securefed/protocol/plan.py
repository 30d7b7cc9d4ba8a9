"""The round plan, as both daemons see it: construction, canonical bytes, digest, cohort ids.

The plan travels as ``securefed.v1.RoundPlan``. Its digest (``plan_sha256``) is SHA-256 over the
deterministic serialization of the plan with ``plan_sha256`` cleared, and the same bytes are the
opaque ``plan`` field of the secure-aggregation ``RoundSetup``, so the session id binds every field
(round, global-adapter digest, strategy, parameters, cohort). On the wire ``round`` is the attempt
id: unique per session, never reused, even when a round is re-run after an abort or a crash.

Secure aggregation numbers clients with integers; ``cohort_ids`` maps the certificate names of the
cohort, sorted, to 1..n. Both sides compute it from the same plan.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from google.protobuf import message as pb_message
from google.protobuf import unknown_fields as pb_unknown

from securefed.errors import InvalidMessage
from securefed.transport._generated import federation_pb2 as pb

PLAN_DOMAIN = b"securefed/round-plan/v1\x00"


def plan_bytes(plan: pb.RoundPlan) -> bytes:
    p = pb.RoundPlan()
    p.CopyFrom(plan)
    p.ClearField("plan_sha256")
    return p.SerializeToString(deterministic=True)


def plan_sha256(plan: pb.RoundPlan) -> bytes:
    return hashlib.sha256(PLAN_DOMAIN + plan_bytes(plan)).digest()


def seal_plan(plan: pb.RoundPlan) -> pb.RoundPlan:
    plan.plan_sha256 = plan_sha256(plan)
    return plan


def verify_plan(plan: pb.RoundPlan) -> None:
    if not hmac.compare_digest(plan.plan_sha256, plan_sha256(plan)):
        raise InvalidMessage("round plan digest does not match its contents")
    ids = [m.client_id for m in plan.cohort]
    if ids != sorted(set(ids)):
        raise InvalidMessage("round plan cohort must be sorted by client id, without duplicates")
    for m in plan.cohort:
        if len(m.identity_public_key) != 32:
            raise InvalidMessage(f"round plan: identity key of {m.client_id!r} is not 32 bytes")
    if plan.vector_length == 0:
        raise InvalidMessage("round plan: vector_length is 0")


def unknown_fields(msg: pb_message.Message, path: str = "") -> list[str]:
    """Every field of ``msg`` (nested messages included) that this build's schema does not know, as
    "RoundPlan.secagg field 250": what a newer peer sent that an older one would otherwise drop in silence."""
    path = path or msg.DESCRIPTOR.name
    out = [f"{path} field {f.field_number}" for f in pb_unknown.UnknownFieldSet(msg)]
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [(f"{path}.{field.name}[{k!r}]", v) for k, v in value.items()
                     if isinstance(v, pb_message.Message)]
        elif field.is_repeated:
            items = [(f"{path}.{field.name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(f"{path}.{field.name}", value)]
        for sub_path, sub in items:
            out += unknown_fields(sub, sub_path)
    return out


@dataclass(frozen=True)
class CohortIds:
    by_name: dict[str, int]
    by_int: dict[int, str]

    def int_of(self, name: str) -> int:
        try:
            return self.by_name[name]
        except KeyError:
            raise InvalidMessage(f"{name!r} is not in this round's cohort") from None

    def name_of(self, i: int) -> str:
        try:
            return self.by_int[i]
        except KeyError:
            raise InvalidMessage(f"client number {i} is not in this round's cohort") from None


def cohort_ids(plan: pb.RoundPlan) -> CohortIds:
    names = sorted(m.client_id for m in plan.cohort)
    by_name = {n: i + 1 for i, n in enumerate(names)}
    return CohortIds(by_name, {i: n for n, i in by_name.items()})
