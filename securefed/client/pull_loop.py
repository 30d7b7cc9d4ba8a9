"""The member's pull loop: register, long-poll for tasks, hand each to the daemon, survive the network.

A lost server is retried with exponential backoff, jittered from a CSPRNG, until
``connection.give_up_after_s`` (exit 3); a session the server refused or a protocol check ended is
dropped, and the loop keeps serving: the next plan starts afresh with fresh keys. A security event
among those (``client.alerts``) is an ERROR line and is reported to the operator.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

from securefed.client import alerts
from securefed.errors import CryptoError, InvalidMessage, NotRegistered, ProtocolAbort, TransportError
from securefed.logs import get_logger, log

if TYPE_CHECKING:  # the daemon imports this module
    from securefed.client.daemon import ClientDaemon

logger = get_logger("client")

EXIT_DONE = 0
EXIT_SERVER_UNREACHABLE = 3


def serve(daemon: ClientDaemon) -> int:
    """Serve the federation until it is done (0), stopped (0) or the server is lost for good (3)."""
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
        except (InvalidMessage, ProtocolAbort, CryptoError) as exc:
            # The server refused one of our messages, or the protocol failed a check: this session is
            # over for us. Keep serving; the next plan starts fresh.
            kind = alerts.alert_kind(exc)
            if kind is None:
                log(logger, "session ended", reason=str(exc))
            else:
                log(logger, f"SECURITY: {kind} check failed: left the session", level=logging.ERROR,
                    attempt=daemon.current_attempt() or None, reason=str(exc))
                alerts.report(daemon.connection, daemon.current_attempt(), kind, str(exc))
            daemon.drop_session(str(exc))
    log(logger, "client stopped", client=daemon.name)
    return EXIT_DONE  # stopped on request (SIGTERM/SIGINT): not a failure
