"""Member-side limits on what a malicious server can try again and again.

``GraphGrindingGuard``: in SecAgg+ (sparse graph) the neighbour graph is a function of the session,
and a fresh session (fresh round keys) gives a fresh graph. A server that lets rounds "time out"
after seeing each graph could retry until one surrounds a victim with its colluders. Each member
therefore joins at most ``limit`` sparse-graph sessions per *federation round* (the highest round it
saw complete) that end before its own release; after that it declines sparse plans until a round
completes. The count is kept on disk (``MemberState``), so a restart does not reset it, and it depends
on nothing the server can vary per plan (the attempt id or a nudged global adapter digest leave it as
it is). This bounds the server to ``limit`` graphs per round instead of as many as it likes; the
complete graph (plain Bonawitz) is not affected and not limited.
"""

from __future__ import annotations

from securefed.client.member_state import MemberState


class GraphGrindingGuard:
    def __init__(self, state: MemberState, limit: int) -> None:
        self.state, self.limit = state, limit

    def unreleased(self) -> int:
        return self.state.sparse_unreleased()

    def allows(self) -> bool:
        return self.unreleased() < self.limit

    def joined(self, attempt: int) -> None:
        self.state.sparse_joined(attempt)

    def released(self, attempt: int) -> None:
        self.state.sparse_released(attempt)
