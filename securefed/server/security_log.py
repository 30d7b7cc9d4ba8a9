"""Security events the coordinator saw or was told about, loud in the log and kept for ``securefed status``.

What an honest member or server never does ends up here: a member's ledger that forks or rewinds
what it reported before (refused), a signature or certificate that does not verify, a registration with
a key its certificate does not bind, a proven protocol breaker (``culprits``), and what members report
with ``ReportSecurityAlert`` (a plan they refused, an adapter that is not the announced one: what the
server itself cannot see, or may have caused).

No single source can flood this or push others out of view. Every alert has sources: the member's
certificate name and, for what arrives over the network, the peer address. Per (source, kind) at most
``PER_SOURCE_PER_WINDOW`` alerts an hour are written (an ERROR line and one fsynced JSON line in
``state_dir/security-alerts.jsonl``); the rest are only counted, in ``security-alerts.counts.json``
(rewritten atomically, no fsync), so ``status`` can say "37 x failed registration from member-3 in the
last hour" without 37 disk syncs. The alert file rotates at ``MAX_FILE_BYTES`` (one previous file kept).
Every peer-provided string is sanitised (``securefed.sanitize``) before it is stored or logged, and
``summary`` groups alerts per source and kind (newest, count), so status shows every source.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from securefed.fsutil import append_durably
from securefed.logs import get_logger, log
from securefed.sanitize import clean, clean_tree
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("server.security")

ALERTS_FILE = "security-alerts.jsonl"
COUNTS_FILE = "security-alerts.counts.json"
WINDOW_S = 3600.0
PER_SOURCE_PER_WINDOW = 5
MAX_FILE_BYTES = 1 << 20
DETAIL_MAX = 300
SUMMARY_GROUPS = 30  # status shows at most this many (source, kind) groups, newest first
KIND_NAMES = {pb.SECURITY_ALERT_KIND_PLAN_REFUSED: "plan refused", pb.SECURITY_ALERT_KIND_DIGEST_MISMATCH: "digest mismatch",
              pb.SECURITY_ALERT_KIND_LEDGER_CONFLICT: "ledger conflict",
              pb.SECURITY_ALERT_KIND_AUTHENTICATION: "authentication failed"}


def peer_address(peer: str) -> str:
    """gRPC's ``context.peer()`` ("ipv4:10.0.0.5:41234", "ipv6:[::1]:5000") without the port."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
    return clean(host, 80)


class SecurityLog:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / ALERTS_FILE
        self.counts_path = Path(state_dir) / COUNTS_FILE
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], dict[int, int]] = {}  # (by, source, kind) -> minute -> count

    def record(self, *, client: str, kind: str, detail: str, source: str, attempt: int | None = None,
               address: str | None = None) -> bool:
        """``source``: "server" (seen here) or "member" (reported by ``client``, unverified). Returns
        whether the alert was written (else only counted)."""
        client, kind, detail = clean(client, 64), clean(kind, 64), clean(detail, DETAIL_MAX)
        address = clean(address, 80) if address else None
        now = time.time()
        keys = [("member", client, kind)] + ([("address", address, kind)] if address else [])
        with self._lock:
            counts = [self._count(k, now) for k in keys]
            self._save_counts(now)
        if any(c > PER_SOURCE_PER_WINDOW for c in counts):
            if any(c == PER_SOURCE_PER_WINDOW + 1 for c in counts):
                log(logger, f"SECURITY: further '{kind}' alerts from this source are counted, not written, this hour",
                    level=logging.ERROR, client=client, address=address)
            return False
        entry = {"at": now, "source": source, "client": client, "kind": kind, "attempt": attempt or None,
                 "detail": detail, "address": address}
        who = f"reported by {client}" if source == "member" else f"member {client}"
        log(logger, f"SECURITY: {kind} ({who})", level=logging.ERROR, attempt=attempt or None, detail=detail,
            address=address)
        self._append((json.dumps(entry, sort_keys=True) + "\n").encode())
        return True

    def _count(self, key: tuple[str, str, str], now: float) -> int:
        minute, first = int(now // 60), int((now - WINDOW_S) // 60) + 1
        buckets = {m: c for m, c in self._buckets.get(key, {}).items() if m >= first}
        buckets[minute] = buckets.get(minute, 0) + 1
        self._buckets[key] = buckets
        return sum(buckets.values())

    def _save_counts(self, now: float) -> None:
        first = int((now - WINDOW_S) // 60) + 1
        rows = []
        for (by, src, kind), buckets in list(self._buckets.items()):
            n = sum(c for m, c in buckets.items() if m >= first)
            if n == 0:
                del self._buckets[(by, src, kind)]  # bounded: only sources heard from this hour
            else:
                rows.append({"by": by, "source": src, "kind": kind, "count": n})
        # Write-then-rename without fsync: a torn file is impossible, a lost update costs nothing durable.
        tmp = self.counts_path.with_name(f".{COUNTS_FILE}.tmp-{os.getpid()}")
        try:
            self.counts_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"updated_at": now, "window_s": WINDOW_S, "counts": rows}))
            os.replace(tmp, self.counts_path)
        except OSError:
            pass  # the counts are a convenience for status; the alerts themselves are kept below

    def _append(self, line: bytes) -> None:
        with self._lock:
            try:
                try:
                    if self.path.stat().st_size + len(line) > MAX_FILE_BYTES:
                        os.replace(self.path, self.path.with_name(ALERTS_FILE + ".1"))
                except FileNotFoundError:
                    pass
                append_durably(self.path, line)
            except OSError as exc:  # the ERROR line stands; the federation goes on
                log(logger, "could not keep the security alert", level=logging.ERROR, path=str(self.path),
                    error=exc.strerror or str(exc))


def _lines(state_dir: Path) -> list[str]:
    out: list[str] = []
    for name in (ALERTS_FILE + ".1", ALERTS_FILE):
        try:
            out += (Path(state_dir) / name).read_text(errors="replace").splitlines()
        except OSError:
            continue
    return out


def read_alerts(state_dir: Path, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` alerts (oldest first), sanitised; unreadable lines are skipped."""
    out = []
    for ln in _lines(state_dir)[-limit:] if limit else _lines(state_dir):
        try:
            d = json.loads(ln)
        except ValueError:
            continue
        if isinstance(d, dict):
            out.append(clean_tree(d))
    return out


def summary(state_dir: Path, now: float | None = None) -> dict[str, Any]:
    """Alerts grouped per (source, member, kind): the newest of each and how many came in the last hour
    (written or only counted), newest groups first; and per peer address, the counts."""
    now = time.time() if now is None else now
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for a in read_alerts(state_dir, limit=0):
        key = (str(a.get("source")), str(a.get("client")), str(a.get("kind")))
        g = groups.setdefault(key, {"source": key[0], "client": key[1], "kind": key[2], "count": 0, "newest": a})
        if float(a.get("at") or 0) >= now - WINDOW_S:
            g["count"] += 1
        if float(a.get("at") or 0) >= float(g["newest"].get("at") or 0):
            g["newest"] = a
    try:
        counts = clean_tree(json.loads((Path(state_dir) / COUNTS_FILE).read_text()))
        fresh = now - float(counts.get("updated_at") or 0) < WINDOW_S
        rows = counts.get("counts") if fresh and isinstance(counts.get("counts"), list) else []
    except (OSError, ValueError, AttributeError, TypeError):
        rows = []
    by_address = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        if r.get("by") == "address":
            by_address.append({"address": r.get("source"), "kind": r.get("kind"), "count": r.get("count")})
            continue
        for g in groups.values():  # the counter also saw the alerts it did not write
            if g["client"] == r.get("source") and g["kind"] == r.get("kind"):
                g["count"] = max(g["count"], int(r.get("count") or 0))
    ordered = sorted(groups.values(), key=lambda g: float(g["newest"].get("at") or 0), reverse=True)
    return {"window_s": WINDOW_S, "groups": ordered[:SUMMARY_GROUPS], "more_groups": max(0, len(ordered) - SUMMARY_GROUPS),
            "by_address": sorted(by_address, key=lambda r: -int(r["count"] or 0))}
