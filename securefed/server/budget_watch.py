"""Members whose privacy budget allows no more rounds, and what the round loop does about them.

A member that declines a plan for its budget (``PLAN_DECLINE_KIND_PRIVACY_BUDGET``) or because it took
part in all its planned rounds (``..._PLANNED_ROUNDS_DONE``) would decline the next plan too, so it
is marked *exhausted* and left out of the next cohorts: no attempt is spent on it. The mark lasts
until the member registers again (restarted, perhaps with a larger budget) or, with
``federation.on_budget_exhausted = 'wait'``, until a backoff that doubles each time (from
``budget_retry_s`` to ``budget_retry_max_s``) expires. With too few unmarked members left to start a
round, ``'stop'`` (the default) ends the federation: "privacy budget exhausted for all members".
"""

from __future__ import annotations

import math
import time

from securefed.logs import get_logger, log
from securefed.server.attempt import AttemptContext
from securefed.server.config import ServerConfig
from securefed.server.mailbox import Mailbox
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.coordinator")

BUDGET_KINDS = (pb.PLAN_DECLINE_KIND_PRIVACY_BUDGET, pb.PLAN_DECLINE_KIND_PLANNED_ROUNDS_DONE)


class BudgetWatch:
    def __init__(self, config: ServerConfig, mailbox: Mailbox) -> None:
        self.fed = config.federation
        self.mailbox = mailbox
        self.backoff_s = self.fed.budget_retry_s

    @property
    def stops(self) -> bool:
        return self.fed.on_budget_exhausted == "stop"

    def note(self, ctx: AttemptContext) -> None:
        """After an attempt: mark the members that declined it for their budget."""
        budget = [c for c, k in ctx.decline_kinds.items() if k in BUDGET_KINDS]
        if not budget:
            return
        until = math.inf if self.stops else time.monotonic() + self.backoff_s
        for c in budget:
            self.mailbox.mark_exhausted(c, ctx.declined.get(c, "privacy budget"), until)
        log(logger, "members out of privacy budget: left out of the next cohorts", attempt=ctx.attempt,
            round=ctx.round, members=sorted(budget), ask_again_in_s=None if self.stops else self.backoff_s)
        if not self.stops:
            self.backoff_s = min(2 * self.backoff_s, self.fed.budget_retry_max_s)

    def round_completed(self) -> None:
        self.backoff_s = self.fed.budget_retry_s

    def waiting_detail(self, exhausted: dict[str, str], connected: list[str]) -> str:
        return (f"waiting: privacy budget exhausted for {len(exhausted)} of {len(connected)} members; "
                f"asking them again within {self.backoff_s:g} s")

    def ending(self, connected: list[str], exhausted: dict[str, str], done: int) -> str:
        """The one line the federation ends with when too few members have budget left."""
        whom = ("all members" if len(exhausted) >= len(connected) else
                f"{len(exhausted)} of {len(connected)} members (too few left for min_clients {self.fed.min_clients})")
        why = "; ".join(f"{c}: {_first_clause(r)}" for c, r in sorted(exhausted.items()))
        return f"privacy budget exhausted for {whom} after {done} of {self.fed.rounds} rounds ({why})"


def _first_clause(reason: str) -> str:
    head = reason.split(": ", 1)[0]
    return head if head in ("planned rounds done", "privacy budget") else reason[:60]
