"""Member-side limits on what a malicious server can try again and again.

``GraphGrindingGuard``: in SecAgg+ (sparse graph) the neighbour graph is a function of the session,
and a fresh session (fresh round keys) gives a fresh graph. A server that lets rounds "time out"
after seeing each graph could retry until one surrounds a victim with its colluders. Each member
therefore joins at most ``limit`` sparse-graph sessions for the same global adapter that end before
its own release; after that it declines sparse plans for that adapter until a round completes
(a new adapter). This bounds the server to ``limit`` graphs per round instead of as many as it
likes; the complete graph (plain Bonawitz) is not affected and not limited.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GraphGrindingGuard:
    limit: int
    _joined: dict[str, set[int]] = field(default_factory=dict)
    _released: set[int] = field(default_factory=set)

    def unreleased(self, adapter_digest: str) -> int:
        return len(self._joined.get(adapter_digest, set()) - self._released)

    def allows(self, adapter_digest: str) -> bool:
        return self.unreleased(adapter_digest) < self.limit

    def joined(self, adapter_digest: str, attempt: int) -> None:
        self._joined.setdefault(adapter_digest, set()).add(attempt)

    def released(self, attempt: int) -> None:
        self._released.add(attempt)
