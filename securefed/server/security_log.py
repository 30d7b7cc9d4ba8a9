"""Security events the coordinator saw or was told about, loud in the log and kept for ``securefed status``.

What an honest member or server never does ends up here: a member's ledger that forks or rewinds
what it reported before (refused), a signature or certificate that does not verify, and what members
report with ``ReportSecurityAlert`` (a plan they refused, an adapter that is not the announced one:
what the server itself cannot see, or may have caused). Each is an ERROR line and one JSON line
appended to ``state_dir/security-alerts.jsonl`` (fsynced: alerts are rare and must survive). A member
that reports more than ``MEMBER_ALERTS_PER_WINDOW`` alerts in ``WINDOW_S`` is not written down beyond
that (one line says so): a report costs the server a disk write, so it must not be a way to fill it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from securefed.logs import get_logger, log
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.security")

ALERTS_FILE = "security-alerts.jsonl"
MEMBER_ALERTS_PER_WINDOW = 20
WINDOW_S = 3600.0
KIND_NAMES = {pb.SECURITY_ALERT_KIND_PLAN_REFUSED: "plan refused", pb.SECURITY_ALERT_KIND_DIGEST_MISMATCH: "digest mismatch",
              pb.SECURITY_ALERT_KIND_LEDGER_CONFLICT: "ledger conflict",
              pb.SECURITY_ALERT_KIND_AUTHENTICATION: "authentication failed"}


class SecurityLog:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / ALERTS_FILE
        self._lock = threading.Lock()
        self._reports: dict[str, list[float]] = {}  # member -> times of its recent reports

    def record(self, *, client: str, kind: str, detail: str, source: str, attempt: int | None = None) -> None:
        """``source``: "server" (seen here) or "member" (reported by ``client``, unverified)."""
        if source == "member" and not self._admit(client):
            return
        entry = {"at": time.time(), "source": source, "client": client, "kind": kind,
                 "attempt": attempt or None, "detail": detail[:300]}
        who = f"reported by {client}" if source == "member" else f"member {client}"
        log(logger, f"SECURITY: {kind} ({who})", level=logging.ERROR, attempt=attempt or None, detail=detail[:300])
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:  # the ERROR line above stands; the federation goes on
                log(logger, "could not keep the security alert", level=logging.ERROR, path=str(self.path),
                    error=exc.strerror or str(exc))


    def _admit(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._reports.get(client, []) if now - t < WINDOW_S]
            recent.append(now)
            self._reports[client] = recent[-(MEMBER_ALERTS_PER_WINDOW + 2):]  # bounded, whatever the flood
        if len(recent) <= MEMBER_ALERTS_PER_WINDOW:
            return True
        if len(recent) == MEMBER_ALERTS_PER_WINDOW + 1:
            log(logger, "SECURITY: further alerts reported by this member are not recorded this hour",
                level=logging.ERROR, client=client)
        return False


def read_alerts(state_dir: Path, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` alerts (oldest first); unreadable lines are skipped."""
    try:
        lines = (Path(state_dir) / ALERTS_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for ln in lines[-limit:]:
        try:
            d = json.loads(ln)
        except ValueError:
            continue
        if isinstance(d, dict):
            out.append(d)
    return out
