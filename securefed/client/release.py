"""Ledger first, then the update: what a member does the moment before anything derived from its
update leaves it (every protocol adapter calls it as ``SessionDeps.record_release``).

The DP event of the round is appended to the member's signed, hash-chained ledger (durable, fsynced)
and the signed entry is reported to the server; only then does the adapter send its masked input,
ciphertext or (debug mode) plaintext. A crash in between leaves a spent budget and no release, never
the reverse.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from securefed.client.connection import Connection
from securefed.client.hooks import MemberHooks
from securefed.client.session import RoundSession
from securefed.logs import get_logger, log
from securefed.privacy.ledger import Ledger
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("client")


class ReleaseRecorder:
    def __init__(self, ledger: Ledger, connection: Connection, hooks: MemberHooks,
                 fault: Callable[[str, int], None], then: Callable[[], None]) -> None:
        self.ledger, self.connection, self.hooks, self.fault, self.then = ledger, connection, hooks, fault, then

    def __call__(self, s: RoundSession, payload: np.ndarray) -> None:
        assert s.event is not None
        self.hooks.released(s.attempt, payload)
        entry = self.ledger.append(s.event)
        self.fault("after_ledger", s.attempt)
        self.connection.call("ReportPrivacyEvent", pb.PrivacyEventReport(
            header=self.connection.header(s.attempt, pb.STAGE_PRIVACY_REPORT), sequence=entry.seq,
            prev_hash=bytes.fromhex(entry.prev_hash), entry=entry.event_bytes,
            entry_hash=bytes.fromhex(entry.entry_hash), signature=entry.signature))
        log(logger, "privacy event recorded", attempt=s.attempt, ledger_seq=entry.seq)
        self.then()  # the next round's budget projection, off the release path
