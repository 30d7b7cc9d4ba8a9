"""Stage names on the wire, and how the secure-aggregation stages map onto them.

The wire (``securefed.v1.Stage``) numbers stages; the secagg state machines name theirs with
``securefed.secagg.Stage``; logs and the round log use the short lower-case names below.
"""

from __future__ import annotations

from securefed import secagg as sa
from securefed.transport._generated import federation_pb2 as pb

STAGE_NAMES: dict[int, str] = {v.number: v.name.removeprefix("STAGE_").lower() for v in pb.Stage.DESCRIPTOR.values}

SECAGG_TO_WIRE: dict[sa.Stage, int] = {
    sa.Stage.ADVERTISE_KEYS: pb.STAGE_ADVERTISE_KEYS,
    sa.Stage.SHARE_KEYS: pb.STAGE_SHARE_KEYS,
    sa.Stage.MASKED_INPUT: pb.STAGE_MASKED_INPUT,
    sa.Stage.CONSISTENCY: pb.STAGE_CONSISTENCY_CHECK,
    sa.Stage.UNMASK: pb.STAGE_UNMASK,
}

# The Task body that opens each secagg stage at a member, and the stage it answers in.
SECAGG_TASK_STAGE: dict[str, int] = {
    "key_broadcast": pb.STAGE_SHARE_KEYS,
    "share_delivery": pb.STAGE_MASKED_INPUT,
    "survivor_list": pb.STAGE_CONSISTENCY_CHECK,
    "unmask_request": pb.STAGE_UNMASK,
}

# The SubmitResult body a member answers each secagg stage with (its header names that stage).
SECAGG_RESULT_STAGE: dict[str, int] = {
    "advertise_keys": pb.STAGE_ADVERTISE_KEYS,
    "share_keys": pb.STAGE_SHARE_KEYS,
    "masked_input_signature": pb.STAGE_MASKED_INPUT,  # then the masked vector itself, streamed
    "consistency_signature": pb.STAGE_CONSISTENCY_CHECK,
    "unmask_response": pb.STAGE_UNMASK,
}


def stage_name(stage: int) -> str:
    return STAGE_NAMES.get(stage, f"stage-{stage}")
