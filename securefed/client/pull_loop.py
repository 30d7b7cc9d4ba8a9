"""The member's pull loop: register, long-poll for tasks, hand each to the daemon, survive the network.

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

from securefed.client import alerts
from securefed.errors import (
    AttemptEnded,
    CertificateError,
    CryptoError,
    InvalidMessage,
    NotRegistered,
    ProtocolAbort,
    TransportError,
)
from securefed.logs import get_logger, log

if TYPE_CHECKING:  # the daemon imports this module
    from securefed.client.daemon import ClientDaemon

logger = get_logger("client")

EXIT_DONE = 0
EXIT_CERTIFICATE = 2  # like any configuration error: retrying cannot fix it
EXIT_SERVER_UNREACHABLE = 3
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
            backoff, down_since = conn.backoff_initial_s, None
            with daemon.heartbeat.busy():
                done = daemon.handle(task)
            if done:
                return EXIT_DONE
        except TransportError as exc:
            registered = False
            daemon.certificates.explain_failure()  # a certificate problem is no outage: its fix, then exit 2
            now = time.monotonic()
            down_since = down_since or now
            if conn.give_up_after_s is not None and now - down_since > conn.give_up_after_s:
                log(logger, "giving up: server unreachable", seconds=round(now - down_since, 1), error=str(exc))
                return EXIT_SERVER_UNREACHABLE
            delay = backoff * (0.5 + secrets.randbelow(1000) / 1000.0)
            log(logger, "server unreachable, retrying", retry_in_s=round(delay, 2), error=str(exc))
            daemon.drop_session("connection lost")
            if daemon.stop_event.wait(delay):
                break
            backoff = min(backoff * 2, conn.backoff_max_s)
            daemon.connection.open()
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
