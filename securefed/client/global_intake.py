"""The global adapters the server sends, taken as untrusted input.

Each one is downloaded, decoded by ``bundle_check`` (framing, finite sane values, layout), checked
against the digest it was announced with (a plan's, or an ``AggregateReady``'s: a mismatch is a
``SecurityAlert``), kept on disk by ``GlobalStore`` (a disk that refuses it is one line, not a crash)
and, once a round produced it, counted as a new federation round for the graph-grinding guard.
"""

from __future__ import annotations

import hmac

from securefed.client import bundle_check
from securefed.client.connection import Connection
from securefed.client.global_store import GlobalStore, keep_or_log
from securefed.client.member_state import MemberState
from securefed.errors import InvalidMessage, SecurityAlert
from securefed.protocol.bundle import Bundle
from securefed.transport._generated import federation_pb2 as pb


class GlobalIntake:
    def __init__(self, connection: Connection, store: GlobalStore, member_state: MemberState) -> None:
        self.connection = connection
        self.store = store
        self.member_state = member_state

    def for_plan(self, attempt: int, expected_digest: bytes) -> Bundle:
        """The adapter a plan trains from: the one kept, when it is the plan's, else downloaded."""
        latest = self.store.latest
        if latest is not None and hmac.compare_digest(bytes.fromhex(latest.digest), expected_digest):
            return latest  # verified when the previous round completed: no second download
        return self.fetch(attempt, expected_digest)

    def fetch(self, attempt: int, expected_digest: bytes | None) -> Bundle:
        got = self.connection.download(attempt)
        if got.kind != pb.AGGREGATE_KIND_GLOBAL_ADAPTER or len(got.parts) != 1:
            raise InvalidMessage("expected the global adapter bundle")
        bundle = bundle_check.decode_global(got.parts[0])
        if expected_digest is not None and not hmac.compare_digest(bytes.fromhex(bundle.digest), expected_digest):
            raise SecurityAlert("the global adapter the server sent does not match the plan's digest", kind="digest")
        return bundle

    def new_round(self, parts: list[bytes], announced_digest: bytes, rnd: int) -> Bundle:
        """A round's new adapter (from an ``AggregateReady`` download), checked, kept and counted."""
        if len(parts) != 1:
            raise InvalidMessage("expected the new global adapter bundle")
        bundle = bundle_check.decode_global(parts[0])
        if not hmac.compare_digest(bytes.fromhex(bundle.digest), announced_digest):
            raise SecurityAlert("new global adapter does not match its announced digest", kind="digest")
        self._keep(bundle, rnd)
        return bundle

    def final(self, final_round: int) -> None:
        """At the end of the federation: the final adapter, unless it is the one kept already."""
        if self.store.latest is None or final_round != self.store.latest_round():
            self._keep(self.fetch(0, None), final_round)

    def _keep(self, bundle: Bundle, rnd: int) -> None:
        keep_or_log(self.store.keep, bundle, rnd)
        self.member_state.round_completed(int(rnd))  # a new federation round for the grinding guard
