"""The member's pull loop: register, long-poll for tasks, hand each to the daemon, survive the network.

The federation ends for a member only with the server's signed end (``client.federation_end``); a
server that stops answering (an upgrade, a crash, a full disk) is an outage to wait out, with one
clear line when it starts and one at most every ``OUTAGE_LINE_EVERY_S`` while it lasts.
A lost server is retried with exponential backoff, jittered from a CSPRNG, until
``connection.give_up_after_s`` (exit 3), unless the failure is a certificate problem (another CA,
expired, a name mismatch, revoked), which ends the daemon with one line and its fix (exit 2); a
session the server refused or a protocol check ended is dropped, and the loop keeps serving: the next
plan starts afresh with fresh keys. Whatever the server sends that fails to decode or check (a crafted
bundle, plan or stage message) raises one of the typed errors below and ends that session only; it
never ends the daemon. A security event among those (``client.alerts``) is an ERROR line and is
reported to the operator.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

from securefed import exit_codes
from securefed.client import alerts
from securefed.errors import (
    AttemptEnded,
    CertificateError,
    CryptoError,
    DiskWriteError,
    InvalidMessage,
    NotRegistered,
    ProtocolAbort,
    TransportError,
)
from securefed.logs import get_logger, log

if TYPE_CHECKING:  # the daemon imports this module
    from securefed.client.daemon import ClientDaemon

logger = get_logger("client")

EXIT_DONE = exit_codes.FINISHED  # the server's signed end of the federation, or stopped on request
EXIT_CERTIFICATE = exit_codes.CONFIG  # like any configuration error: retrying cannot fix it
EXIT_SERVER_UNREACHABLE = exit_codes.SERVER_UNREACHABLE
OUTAGE_LINE_EVERY_S = 60.0
# After a refused message the server may hand out the same task until its stage closes: do not spin on it.
REFUSED_PAUSE_S = 0.5
# What a message from the server raises when it fails a check (the daemon converts what the server's input
# can trigger into these; a local mistake, e.g. malformed training data, stays a one-line exit).
SESSION_ENDING = (InvalidMessage, ProtocolAbort, CryptoError)


def serve(daemon: ClientDaemon) -> int:
    """Serve the federation until it is done (0), stopped (0), a certificate problem stops it (2) or the
    server is lost for good (3)."""
    try:
        return _serve(daemon)
    except CertificateError as exc:
        log(logger, "stopped: certificate problem", level=logging.ERROR, error=str(exc))
        return EXIT_CERTIFICATE


def _serve(daemon: ClientDaemon) -> int:
    conn = daemon.config.connection
    backoff = conn.backoff_initial_s
    down_since: float | None = None
    said_at = 0.0  # when the outage was last logged
    registered = False
    daemon.connection.open()
    while not daemon.stop_event.is_set():
        try:
            if not registered:
                resp = daemon.connection.register(daemon.identity.public_bytes())
                log(logger, "registered", client=resp.client_id, federation=resp.federation_id,
                    server_attempt=resp.current_round)
                daemon.on_registered(resp)
                registered = True
            task = daemon.connection.poll(daemon.current_attempt(), conn.poll_wait_s)
            if down_since is not None:
                log(logger, "server reachable again", down_for_s=round(time.monotonic() - down_since, 1))
            backoff, down_since = conn.backoff_initial_s, None
            with daemon.heartbeat.busy():
                done = daemon.handle(task)
            if done:
                return EXIT_DONE
        except TransportError as exc:
            registered = False
            daemon.certificates.explain_failure()  # a certificate problem is no outage: its fix, then exit 2
            now = time.monotonic()
            if down_since is None:
                down_since = said_at = now
                log(logger, "server unreachable: waiting for it (an outage, not the end: a member stops only on the "
                    "server's signed end of the federation)", level=logging.WARNING, error=str(exc))
            if conn.give_up_after_s is not None and now - down_since > conn.give_up_after_s:
                log(logger, "giving up: server unreachable", seconds=round(now - down_since, 1), error=str(exc))
                return EXIT_SERVER_UNREACHABLE
            delay = backoff * (0.5 + secrets.randbelow(1000) / 1000.0)
            if now - said_at >= OUTAGE_LINE_EVERY_S:
                said_at = now
                log(logger, "server still unreachable: waiting, the federation has not ended", level=logging.WARNING,
                    down_for_s=round(now - down_since), retry_in_s=round(delay, 2), error=str(exc))
            daemon.drop_session("connection lost")
            if daemon.stop_event.wait(delay):
                break
            backoff = min(backoff * 2, conn.backoff_max_s)
            daemon.connection.open()
        except DiskWriteError as exc:  # a full disk (ledger, member state): nothing released; decline for a while
            daemon.storage.failed(exc, daemon.current_attempt())
            daemon.drop_session(str(exc))
        except NotRegistered as exc:  # the server restarted or forgot us: register again
            daemon.drop_session(str(exc))
            registered = False
        except AttemptEnded as exc:  # the server ended the attempt while we trained it: nothing was released
            daemon.drop_session(str(exc))
        except SESSION_ENDING as exc:
            # The server refused one of our messages, or what it sent failed a check: this session is
            # over for us. Keep serving; the next plan starts fresh.
            kind = alerts.alert_kind(exc)
            if kind is None:
                log(logger, "security: session ended on a refused message", level=logging.WARNING,
                    error=type(exc).__name__, reason=str(exc), attempt=daemon.current_attempt() or None)
            else:
                log(logger, f"SECURITY: {kind} check failed: left the session", level=logging.ERROR,
                    attempt=daemon.current_attempt() or None, reason=str(exc))
                alerts.report(daemon.connection, daemon.current_attempt(), kind, str(exc))
            daemon.drop_session(str(exc))
            daemon.stop_event.wait(REFUSED_PAUSE_S)
    log(logger, "client stopped", client=daemon.name)
    return EXIT_DONE  # stopped on request (SIGTERM/SIGINT): not a failure
