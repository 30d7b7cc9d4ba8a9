"""One attempt this member takes part in, as typed state, and what its protocol adapters share.

A ``RoundSession`` lives from the plan to the attempt's outcome. The plaintext update exists only
between training and its release: the protocol adapter masks or encrypts it and drops it; the member
keeps no copy of what it released (a test observes it through ``MemberHooks.released``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from securefed.client.connection import Connection
from securefed.crypto.keys import IdentityKeyPair
from securefed.privacy.events import DpEvent
from securefed.protocol.bundle import Bundle
from securefed.protocol.plan import CohortIds
from securefed.strategies.base import Strategy
from securefed.transport._generated import federation_pb2 as pb

# (point, attempt): fault points; a hook may raise ProtocolAbort there to leave the session silently.
FaultFn = Callable[[str, int], None]


@dataclass
class RoundSession:
    plan: pb.RoundPlan
    attempt: int
    ids: CohortIds
    me: int  # this member's number in the cohort (1..n)
    bundle: Bundle  # the global adapter the plan binds
    strategy: Strategy
    approved: DpEvent | None = None  # what the budget guard approved before training
    event: DpEvent | None = None  # what training ran: written to the ledger before release
    client_state: np.ndarray | None = None  # the strategy's next client state, kept once the round commits
    released: bool = False  # this member's protected update left it

    @property
    def plan_digest(self) -> bytes:
        return bytes(self.plan.plan_sha256)


# Called with the session and its plaintext payload right before it is protected and uploaded:
# appends the DP event to the ledger (durable) and reports the signed entry to the server.
ReleaseFn = Callable[[RoundSession, np.ndarray], None]


@dataclass(frozen=True)
class SessionDeps:
    """What every protocol adapter needs from the daemon."""

    connection: Connection
    identity: IdentityKeyPair
    name: str
    fault: FaultFn
    record_release: ReleaseFn
