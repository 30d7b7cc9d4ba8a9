"""The only way a member's daemon finishes: the server's signed end of the federation.

``accept`` verifies a ``Done`` (``securefed.protocol.ending``: a server certificate of the pinned CA,
not revoked, its signature, this federation's id). One that does not verify is a security event,
logged as an ERROR and reported once, then waited out like an outage: the member keeps serving (and
asks again after a pause), so a server that went away and came back, or one that cannot sign, never
turns a member off. ``finish`` then does what a member does at the end: the final adapter, the PEFT
export, one line with what it contributed.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from cryptography import x509

from securefed.client import alerts
from securefed.client.connection import Connection
from securefed.errors import CryptoError, SecureFedError
from securefed.logs import get_logger, log
from securefed.protocol.ending import verify_end
from securefed.storage import disk_write_error
from securefed.transport._generated import federation_pb2 as pb

if TYPE_CHECKING:  # the daemon imports this module
    from securefed.client.daemon import ClientDaemon

logger = get_logger("client")

REFUSED_END_PAUSE_S = 30.0  # a Done that does not verify comes back at every poll: do not spin on it


class MemberEnd:
    def __init__(self, ca: x509.Certificate, connection: Connection, stop: threading.Event) -> None:
        self._ca = ca
        self._connection = connection
        self._stop = stop
        self.federation_id: str | None = None  # as the server said at registration
        self.ending: str | None = None
        self._refused: set[str] = set()

    def accept(self, done: pb.Done, revoked_serials: frozenset[int] = frozenset()) -> bool:
        """True when ``done`` is the server's signed end of this federation; else logged and waited out."""
        try:
            self.ending = verify_end(done, self._ca, federation_id=self.federation_id, revoked_serials=revoked_serials)
            return True
        except CryptoError as exc:
            if str(exc) not in self._refused:  # once per reason: the server repeats it at every poll
                self._refused.add(str(exc))
                log(logger, "SECURITY: refused an end of the federation that does not verify: waiting for the "
                    "server as for an outage", level=logging.ERROR, reason=str(exc), final_round=done.final_round)
                alerts.report(self._connection, 0, "authentication", f"end of federation refused: {exc}")
            self._stop.wait(REFUSED_END_PAUSE_S)
            return False


def finish(daemon: ClientDaemon, done: pb.Done) -> None:
    """The federation ended for good: fetch the final adapter, export it as a PEFT directory, say so."""
    try:
        daemon.adapters.final(int(done.final_round))
    except SecureFedError as exc:
        log(logger, "could not fetch the final adapter", error=str(exc))
    peft_dir = None
    out = daemon.store.dir / "peft"
    try:
        if daemon.store.latest is not None:
            peft_dir = daemon.trainer.export_peft(daemon.store.latest, out)
    except (SecureFedError, OSError) as exc:  # a full disk: the adapter file stays; only its export is missing
        full = disk_write_error(exc, out, "the PEFT copy of the final adapter is missing: free space and export it "
                                "from the adapter file") if isinstance(exc, OSError) else None
        log(logger, "could not export the PEFT adapter", level=logging.ERROR, error=str(full or exc))
    log(logger, "federation finished", final_round=done.final_round, ending=daemon.end.ending, reason=done.reason,
        rounds_contributed=daemon.rounds_contributed, attempts_trained=daemon.rounds_trained,
        epsilon_spent=round(daemon.ledger.epsilon(), 4), target_epsilon=daemon.config.privacy.target_epsilon,
        adapter=str(daemon.store.adapter_path), peft_adapter=str(peft_dir) if peft_dir else None)
