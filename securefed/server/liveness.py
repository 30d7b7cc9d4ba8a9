"""Which cohort members of the live attempt still show signs of life, and which the server refused.

A member working on an attempt shows it by anything it sends about that attempt: heartbeats (sent
every ``deadlines.heartbeat_s`` while it trains, masks or uploads), submissions, downloads, and
polls (a member inside a long poll is alive). A member silent for ``deadlines.missed_heartbeats``
intervals, or whose message the server refused in this attempt (its session is over: it will not
answer again), is *lost*: the round loop ends the stage without waiting for it, so a dead member
costs seconds instead of the stage deadline. A poll about another attempt after it was handed a
task of this one does not count: the member has left this session.

Plain data under the coordinator's lock (the mailbox calls it); no I/O, no waiting. ``ClientInfo`` is
what the mailbox's registry keeps per member: its key and certificate, when it was last heard from,
its last heartbeat, and whether it sits out for its budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from securefed.transport._generated import federation_pb2 as pb


@dataclass
class ClientInfo:
    client_id: str
    identity_key: bytes
    last_seen: float
    supported_modes: tuple[int, ...] = ()
    certificate: bytes = b""  # DER, from the TLS handshake
    last_seen_wall: float = 0.0  # time.time() of its last request (for status)
    heartbeat: pb.MemberHeartbeat | None = None  # the last one, with what it was doing
    heartbeat_at: float = 0.0  # monotonic time the last heartbeat arrived
    polled_at: float = 0.0  # monotonic time of its last poll (a member busy in an attempt does not poll)
    exhausted: str | None = None  # why it declined for its budget (None: it may be asked)
    exhausted_until: float = 0.0  # monotonic; math.inf = until it registers again
    # Left out of cohorts for other reasons (``server.exclusion``): registering again clears the first three.
    unfit: str | None = None  # declined for a reason that cannot change while it runs (base model, versions)
    lost_in: int | None = None  # the attempt it was lost in (silent), until it polls about another
    storage_until: float = 0.0  # monotonic: declined for a full disk, asked again after this
    revoked: str | None = None  # its certificate is revoked (the server refuses it at every call)


@dataclass
class Liveness:
    silence_s: float  # deadlines.heartbeat_s x deadlines.missed_heartbeats
    attempt: int = 0
    alive_at: dict[str, float] = field(default_factory=dict)  # monotonic time of the last sign of life
    handed: set[str] = field(default_factory=set)  # were handed a task of this attempt
    polling: dict[str, int] = field(default_factory=dict)  # long polls in progress, per member
    refused: dict[str, str] = field(default_factory=dict)  # member -> why its message was refused

    def open(self, attempt: int, cohort: Iterable[str]) -> None:
        now = time.monotonic()
        self.attempt = attempt
        self.alive_at = {c: now for c in cohort}
        self.handed, self.refused, self.polling = set(), {}, {}

    def close(self) -> None:
        self.attempt, self.alive_at, self.handed, self.refused, self.polling = 0, {}, set(), {}, {}

    def _about_this(self, client: str, attempt: int | None) -> bool:
        return attempt == self.attempt or (attempt in (None, 0) and client not in self.handed)

    def seen(self, client: str, attempt: int | None = None) -> None:
        """A message from ``client`` about ``attempt`` (None: about no attempt in particular)."""
        if client in self.alive_at and self._about_this(client, attempt):
            self.alive_at[client] = time.monotonic()

    def hand(self, client: str) -> None:
        if client in self.alive_at:
            self.handed.add(client)
            self.alive_at[client] = time.monotonic()

    def poll_started(self, client: str, attempt: int | None) -> bool:
        """A long poll begins; True when it counts as a sign of life for this attempt while it lasts."""
        if client not in self.alive_at or not self._about_this(client, attempt):
            return False
        self.polling[client] = self.polling.get(client, 0) + 1
        return True

    def poll_ended(self, client: str, counted: bool) -> None:
        if not counted:
            return
        self.seen(client)
        n = self.polling.get(client, 0) - 1
        if n > 0:
            self.polling[client] = n
        else:
            self.polling.pop(client, None)

    def refuse(self, client: str, reason: str) -> None:
        if client in self.alive_at:
            self.refused.setdefault(client, reason)

    def lost(self, waiting_for: Iterable[str]) -> dict[str, str]:
        """Of ``waiting_for``, the members not to wait for any longer, with why."""
        now = time.monotonic()
        out = {}
        for c in waiting_for:
            if c in self.refused:
                out[c] = f"refused: {self.refused[c]}"
            elif c in self.alive_at and c not in self.polling and now - self.alive_at[c] > self.silence_s:
                out[c] = f"silent for {now - self.alive_at[c]:.1f} s (no heartbeat)"
        return out
