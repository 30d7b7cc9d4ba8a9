"""Who the round loop leaves out of the next cohorts besides members out of budget (``budget_watch``),
and the one line that names the cause when the federation cannot go on.

* A member that declined for a reason that cannot change while it runs (its base model is not the
  federation's, its library versions differ where the plan requires equal ones) would decline every
  plan: it is *unfit* until it registers again (restarted, perhaps fixed). No attempt is spent on it.
* A member lost in an attempt (silent: killed, hung, cut off) is left out until it polls again about
  no attempt or another one: a dead member costs one attempt, not one per round.
* A member that declined because it cannot write locally (a full disk) sits out ``STORAGE_RETRY_S``,
  then is asked again.
* A revoked member can never take part (the mailbox refuses it): it is named, never waited for.

The marks live on the mailbox's ``ClientInfo`` (so registering again clears what a restart may fix);
this module only sets and reads them, under the coordinator's lock. No I/O.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from securefed.logs import get_logger, log
from securefed.server.attempt import AttemptContext
from securefed.server.mailbox import Mailbox
from securefed.server.roundlog import AttemptRecord, AttemptStatus
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.coordinator")

# Declines for reasons that cannot change during the federation (the member must be fixed and restarted).
PERMANENT_KINDS = (pb.PLAN_DECLINE_KIND_BASE_MODEL, pb.PLAN_DECLINE_KIND_LIBRARY_VERSIONS)
STORAGE_RETRY_S = 60.0


def note_attempt(mailbox: Mailbox, ctx: AttemptContext, lost: Iterable[str]) -> None:
    """After an attempt: mark the members that declined it for good or for a full disk, and the lost ones."""
    now = time.monotonic()
    marked: dict[str, str] = {}
    with mailbox.lock:
        for c, kind in ctx.decline_kinds.items():
            info = mailbox.clients.get(c)
            if info is None:
                continue
            if kind in PERMANENT_KINDS:
                info.unfit = marked[c] = f"declined: {ctx.declined.get(c, 'cannot take part')}"
            elif kind == pb.PLAN_DECLINE_KIND_LOCAL_STORAGE:
                info.storage_until = now + STORAGE_RETRY_S
                marked[c] = f"cannot write locally, asked again in {STORAGE_RETRY_S:g} s"
        for c in lost:
            info = mailbox.clients.get(c)
            if info is not None and c not in ctx.declined:
                info.lost_in = ctx.attempt
                marked[c] = f"lost in attempt {ctx.attempt}: left out until it polls again"
    if marked:
        log(logger, "members left out of the next cohorts", attempt=ctx.attempt, round=ctx.round, why=marked)


def mark_revoked(mailbox: Mailbox, client_id: str, reason: str) -> None:
    """The server refused ``client_id`` for its revoked certificate: out of the live attempt at once
    (not waited for as silent), and named as revoked in ``securefed status``."""
    with mailbox.lock:
        info = mailbox.clients.get(client_id)
        if info is not None:
            info.revoked = reason
        if mailbox.ctx is not None and client_id in mailbox.ctx.cohort:
            mailbox.liveness.refuse(client_id, "its certificate is revoked")
        mailbox.lock.notify_all()


def left_out(mailbox: Mailbox, connected: Iterable[str], culprits: Iterable[str] = ()) -> dict[str, str]:
    """Members the next cohort must not include (budgets aside), with why: those ``connected``, the
    revoked and the proven culprits (named even when gone: they can never come back)."""
    now = time.monotonic()
    out: dict[str, str] = {c: "proven to have broken the protocol (state_dir/culprits.jsonl)" for c in culprits}
    here = set(connected)
    with mailbox.lock:
        for c, info in mailbox.clients.items():
            if c in out or (c not in here and not info.revoked):
                continue
            if info.revoked:
                out[c] = "revoked: it can never take part again"
            elif info.unfit:
                out[c] = f"{info.unfit} (until it restarts fixed)"
            elif info.lost_in is not None:
                out[c] = f"lost in attempt {info.lost_in} (until it polls again)"
            elif info.storage_until > now:
                out[c] = "cannot write its state or ledger (a full disk): asked again soon"
    return out


def short(why: dict[str, str]) -> str:
    return "; ".join(f"{c}: {w}" for c, w in sorted(why.items()))


def can_take_part(usable: list[str], out: dict[str, str]) -> str:
    """For the waiting line: how many connected members can take part, and who is left out ("" if none)."""
    return f" ({len(usable)} can take part; {short(out)})" if out else ""


def give_up_cause(attempts: list[AttemptRecord], excluded: dict[str, str]) -> str:
    """Why the attempts failed, from the round log: the last abort, who declined or dropped out how
    often (with the first reason), and who is left out now."""
    failed = [a for a in attempts if a.status is not AttemptStatus.COMPLETED]
    parts = []
    if failed and failed[-1].reason:
        parts.append(f"last attempt: {failed[-1].reason}")
    declines: Counter[str] = Counter()
    first: dict[str, str] = {}
    drops: Counter[str] = Counter()
    for a in failed:
        for c, why in a.declined.items():
            declines[c] += 1
            first.setdefault(c, why)
        drops.update(a.dropouts)
    parts += [f"{c} declined {n} of {len(failed)} attempts ({first[c][:120]})" for c, n in sorted(declines.items())]
    parts += [f"{c} dropped out of {n}" for c, n in sorted(drops.items())]
    if excluded:
        parts.append("left out now: " + short(excluded))
    return "; ".join(parts) if parts else "no attempt got far enough to say why"
