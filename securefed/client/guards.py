"""Member-side limits on what a malicious server can try again and again.

``GraphGrindingGuard``: in SecAgg+ (sparse graph) the neighbour graph is a function of the session,
and a fresh session (fresh round keys) gives a fresh graph. A server that lets sessions die after
seeing each graph could retry until one surrounds a victim with its colluders. Each member therefore
joins at most ``limit`` sparse-graph sessions that end before its own release, counted since the later
of (a) the last session it *finished* itself (it answered the unmask request, having checked t
survivors' signatures over the list it signed: the server cannot mint that without running a real
session in which this member released its update) and (b) one wall-clock ``window_s`` ago (its own
clock). Once over, it declines sparse plans until one of the two moves. Kept on disk
(``MemberState``), so a restart does not reset it, and nothing the server sends alone does: not an
attempt id, a nudged global adapter, nor an announced "completed round" (which used to reset it: 6 of
6 sessions joined with a limit of 2, issue 17). So a server gets at most ``limit`` graphs per window,
or per update this member really released, instead of as many as it likes; the complete graph (plain
Bonawitz) is not affected and not limited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from securefed.client.member_state import MemberState

DEFAULT_WINDOW_S = 3600.0


class GraphGrindingGuard:
    def __init__(self, state: MemberState, limit: int, window_s: float = DEFAULT_WINDOW_S, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.limit, self.window_s, self.clock = state, limit, window_s, clock

    def unreleased(self) -> int:
        return self.state.sparse_unreleased(self.window_s, self.clock())

    def allows(self) -> bool:
        return self.unreleased() < self.limit

    def joined(self, attempt: int) -> None:
        self.state.sparse_joined(attempt, self.clock())

    def released(self, attempt: int) -> None:
        self.state.sparse_released(attempt)

    def finished(self, attempt: int) -> None:
        self.state.session_finished(attempt, self.clock())
