"""The global adapters the server sends, taken as untrusted input.

Each one is downloaded, decoded by ``bundle_check`` (framing, finite sane values, layout), checked
against the digest it was announced with (a plan's, or an ``AggregateReady``'s: a mismatch is a
``SecurityAlert``), kept on disk by ``GlobalStore`` (a disk that refuses it is one line, not a crash)
and, once a round produced it, counted as a new federation round for the graph-grinding guard.
"""

from __future__ import annotations

import hmac

from securefed.client import bundle_check
from securefed.client.connection import Connection, Download
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
        bundle = _global_bundle(self.connection.download(attempt))
        if expected_digest is not None and not hmac.compare_digest(bytes.fromhex(bundle.digest), expected_digest):
            raise SecurityAlert("the global adapter the server sent does not match the plan's digest", kind="digest")
        return bundle

    def new_round(self, got: Download, announced_digest: bytes) -> Bundle:
        """A round's new adapter (an ``AggregateReady`` download), checked, kept and counted."""
        bundle = _global_bundle(got)
        if not hmac.compare_digest(bytes.fromhex(bundle.digest), announced_digest):
            raise SecurityAlert("new global adapter does not match its announced digest", kind="digest")
        self._keep(bundle, got.round)
        return bundle

    def final(self, final_round: int) -> None:
        """At the end of the federation: the final adapter, unless it is the one kept already."""
        if self.store.latest is None or final_round != self.store.latest_round():
            self._keep(self.fetch(0, None), final_round)

    def _keep(self, bundle: Bundle, rnd: int) -> None:
        keep_or_log(self.store.keep, bundle, rnd)
        self.member_state.round_completed(int(rnd))  # a new federation round for the grinding guard


def _global_bundle(got: Download) -> Bundle:
    if got.kind != pb.AGGREGATE_KIND_GLOBAL_ADAPTER or len(got.parts) != 1:
        raise InvalidMessage("expected the global adapter bundle")
    return bundle_check.decode_global(got.parts[0])
