"""Whether the member takes part in a plan: pure functions of the plan, the bundle and its own config.

Two verdicts, kept apart:

* ``check_plan`` raises ``ProtocolAbort`` for a plan no honest server sends (a bad digest, another
  identity key for this member, an uncertified cohort member, a payload size the strategy does not
  produce): the member leaves the session without answering.
* ``decline_reason`` returns why this member, by its own rules, sits a well-formed plan out (cohort or
  threshold below its minimums or below what its own ``max_colluding_members`` needs, other LoRA
  settings than it expects, a plaintext round it did not opt into, ...), or None to go on. The member
  answers with that reason and trains nothing. ``cohort_reason`` holds the cohort and threshold rules
  together (threat_models/secure_aggregation.md lists every member-side refusal).

``base_model_reason`` is the base-model rule, kept as its own function: the plan and the bundle's
settings both name the fingerprint of the base checkpoint the federation trains; a member whose own
checkpoint hashes differently declines before training, naming both.

No I/O but the guard's count (read from the member's state): everything else the rules need is passed in.
"""

from __future__ import annotations

import hmac

from cryptography import x509

from securefed import __version__, versions
from securefed.client.cohort import verify_cohort
from securefed.client.config import ClientConfig, ClientSection
from securefed.client.guards import GraphGrindingGuard
from securefed.errors import ProtocolAbort, SecurityAlert
from securefed.protocol.plan import unknown_fields, verify_plan
from securefed.secagg.params import required_threshold
from securefed.training.config import LoraSettings
from securefed.transport._generated import federation_pb2 as pb

MODE_NAMES = {pb.AGGREGATION_MODE_SECAGG: "secagg", pb.AGGREGATION_MODE_CKKS: "ckks",
              pb.AGGREGATION_MODE_PLAINTEXT: "plaintext"}


def check_plan(plan: pb.RoundPlan, name: str, identity_public_key: bytes, ca: x509.Certificate) -> None:
    """``ProtocolAbort`` (or ``InvalidMessage``) unless the plan is well-formed and lists this member
    with its own key, in a cohort of members certified by the pinned CA."""
    verify_plan(plan)
    unknown = unknown_fields(plan)
    if unknown:  # refused, never ignored: the server expects whatever it sent to be applied
        raise SecurityAlert(f"the plan carries {', '.join(unknown[:5])}, which this member (securefed {__version__}) "
                            "does not know: refused rather than ignored (upgrade the member if the federation needs it)")
    if plan.mode not in MODE_NAMES:
        raise ProtocolAbort("unknown aggregation mode in the plan")
    members = {m.client_id: bytes(m.identity_public_key) for m in plan.cohort}
    if name not in members:
        raise ProtocolAbort("the plan does not list this member")
    if not hmac.compare_digest(members[name], identity_public_key):
        raise ProtocolAbort("the plan lists another identity key for this client")
    verify_cohort(ca, plan)


def check_payload_size(plan: pb.RoundPlan, payload_size: int) -> None:
    if plan.vector_length != payload_size:
        raise ProtocolAbort(f"plan vector_length {plan.vector_length} != strategy payload {payload_size}")


def base_model_reason(plan: pb.RoundPlan, settings: dict, mine: str) -> str | None:
    """Why this member declines ``plan`` for its base model (``mine``: its checkpoint's fingerprint, hex),
    or None when the federation's is the same. ``ProtocolAbort`` when the plan and the global bundle's
    settings (both bound into the session) name different bases: no honest server sends that."""
    planned = bytes(plan.base_model_fingerprint).hex()
    base = settings.get("base_model")
    bundled = base.get("fingerprint") if isinstance(base, dict) else None
    if not planned:
        return "the plan names no base-model fingerprint; this member trains only on a verified base model"
    if bundled != planned:
        raise ProtocolAbort("the plan and the global adapter's settings name different base models")
    if not hmac.compare_digest(planned, mine):
        return (f"base model differs: the federation's is {planned[:16]}..., this member's checkpoint is "
                f"{mine[:16]}...; use the federation's base checkpoint (securefed model fingerprint DIR)")
    return None


def library_versions_reason(plan: pb.RoundPlan, have: dict[str, str]) -> tuple[str | None, str | None]:
    """(decline reason, warning) for the numerics libraries this member runs (``have``) against the
    versions the plan says the federation expects: a major.minor difference declines the plan when the
    federation requires equal versions, and is a warning otherwise (None, None when they agree)."""
    differ = versions.mismatches(dict(plan.expected_library_versions), have)
    if not differ:
        return None, None
    text = "library versions differ from the federation's: " + "; ".join(differ)
    if plan.require_library_versions:
        return f"{text}; install the federation's versions (its requirements.lock)", None
    return None, text


def holders_per_member(plan: pb.RoundPlan) -> int:
    """m: the share holders of each member's secrets (its SecAgg+ neighbours and itself; n when complete)."""
    n, k = len(plan.cohort), int(plan.secagg.neighbours)
    return n if k == 0 or k >= n - 1 else k + 1


def cohort_reason(plan: pb.RoundPlan, c: ClientSection) -> str | None:
    """This member's rules on who and how many: its minimum cohort and threshold, and under secure
    aggregation the colluder bound 2t >= m + c + 1 for ITS OWN ``max_colluding_members`` (the server's
    claim plays no part), or a strict majority under CKKS."""
    n, t = len(plan.cohort), int(plan.secagg.threshold)
    if n < c.min_cohort_size or (plan.mode != pb.AGGREGATION_MODE_PLAINTEXT and t < c.min_threshold):
        return (f"cohort of {n} with threshold {t} is below this member's minimums "
                f"(min_cohort_size {c.min_cohort_size}, min_threshold {c.min_threshold})")
    if plan.mode == pb.AGGREGATION_MODE_SECAGG:
        m, cc = holders_per_member(plan), c.max_colluding_members
        need = required_threshold(m, cc)
        if t < need or need > m:
            if cc == 0:
                return f"threshold {t} is not a strict majority of the {m} share holders per member: needs >= {need}"
            fix = f"threshold >= {need}" if need <= m else f"more than the {m} share holders listed"
            return (f"threshold {t} with {m} share holders per member lets {cc} colluding member(s) and the server "
                    f"rebuild both secrets of one member: this member's max_colluding_members = {cc} needs "
                    f"2t >= m + c + 1, i.e. {fix}")
    if plan.mode == pb.AGGREGATION_MODE_CKKS and 2 * t <= n:
        return f"ckks threshold {t} is not a strict majority of the {n} listed members"
    return None


def decline_reason(plan: pb.RoundPlan, lora: LoraSettings, config: ClientConfig,
                   grinding: GraphGrindingGuard) -> str | None:
    """Why this member declines ``plan`` (a reason for the server's log), or None to take part."""
    c = config.client
    reason = cohort_reason(plan, c)
    if reason is not None:
        return reason
    if config.lora is not None and config.lora != lora:
        return f"the federation's LoRA settings {lora.model_dump(mode='json')} differ from this member's [lora]"
    if plan.mode == pb.AGGREGATION_MODE_SECAGG and plan.secagg.neighbours != 0 and not grinding.allows():
        return (f"{grinding.unreleased()} sparse-graph sessions ended before this member's release since it last "
                f"finished one (within {grinding.window_s:g} s): declining more until the window passes or a session "
                "completes with it (graph-grinding guard)")
    if plan.mode == pb.AGGREGATION_MODE_CKKS:
        if c.ckks_secret_context is None:
            return "mode ckks needs client.ckks_secret_context"
    if plan.mode == pb.AGGREGATION_MODE_PLAINTEXT and not c.allow_plaintext_for_debugging:
        return ("the server asked for a plaintext round (it would see this member's update); "
                "refused: set client.allow_plaintext_for_debugging only for debugging")
    return None
