"""Failed TLS handshakes, said by the server itself: a member with a certificate from another CA (or
anything that is not a member) never reaches a securefed handler; only gRPC core writes a line
(``ssl_transport_security.cc ... Handshake failed``). With stderr routed (``logs.route_native_stderr``)
the server sees that line and records a security alert (an ERROR line in its own words, and an entry
for ``securefed status``), throttled to one per ``WINDOW_S`` with the count of failures since, so a
port scan cannot flood the log or the disk.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from securefed.server.security_log import SecurityLog

WINDOW_S = 60.0
WHAT = ("TLS handshake refused: a peer without a valid certificate of this federation's CA (another CA's bundle, "
        "an expired certificate) or no member at all")


class HandshakeWatch:
    """``logs.watch_native`` callback: gRPC core's handshake failures as securefed lines and alerts."""

    def __init__(self, state_dir: Path, *, window_s: float = WINDOW_S) -> None:
        self.alerts = SecurityLog(state_dir)
        self.window_s = window_s
        self._lock = threading.Lock()
        self._said_at = -float("inf")
        self._since = 0  # failures not yet said

    def __call__(self, level: int, source: str, message: str) -> None:
        if not (source.startswith("ssl_transport_security") and "Handshake failed" in message):
            return
        with self._lock:
            self._since += 1
            now = time.monotonic()
            if now - self._said_at < self.window_s:
                return
            count, self._since, self._said_at = self._since, 0, now
        tls = message.rsplit(":", 1)[-1].strip()[:80]  # e.g. "unable to get local issuer certificate"
        self.alerts.record(client="(unauthenticated peer)", kind="authentication failed", source="server",
                           detail=f"{WHAT}; {count} failed handshake(s) since the last such alert; TLS said: {tls}")
