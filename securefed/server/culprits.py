"""Members proven to have broken the protocol, left out of every later attempt of the federation.

A *proven* culprit is named by a verdict anyone can re-check from the evidence alone
(``securefed.secagg.attribution``): a member whose signed share does not open under the recipient's
revealed inbox key, or one that accused an honest member falsely. Suspicion is not enough: a member
that merely went silent is a dropout, not a culprit, so an honest member cannot be framed into
exclusion. Each culprit is one JSON line in ``state_dir/culprits.jsonl`` (verdict and evidence,
fsynced, so a restart keeps it out), a security alert naming it, and an ERROR line; the round loop
draws no cohort with it. The operator lets a member back in by deleting its line (after talking to its
owner) and restarting the server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from securefed.fsutil import append_durably
from securefed.logs import get_logger, log
from securefed.server.attempt import AttemptContext
from securefed.server.security_log import SecurityLog

logger = get_logger("server.coordinator")

CULPRITS_FILE = "culprits.jsonl"


def read_culprits(state_dir: Path) -> dict[str, dict[str, Any]]:
    """member -> its record (the first proof against it), from ``culprits.jsonl``; unreadable lines skipped."""
    try:
        lines = (Path(state_dir) / CULPRITS_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("member"), str):
            out.setdefault(rec["member"], rec)
    return out


class Culprits:
    """The federation's proven culprits (see the module docstring)."""

    def __init__(self, state_dir: Path, alerts: SecurityLog | None = None) -> None:
        self.path = Path(state_dir) / CULPRITS_FILE
        self.alerts = alerts or SecurityLog(state_dir)
        self._known = read_culprits(state_dir)

    @property
    def excluded(self) -> frozenset[str]:
        return frozenset(self._known)

    def note(self, ctx: AttemptContext) -> None:
        """Record the attempt's new culprits: durably, loudly, and out of later cohorts."""
        for member, found in sorted(ctx.culprits.items()):
            if member in self._known:
                continue
            rec = {"member": member, "attempt": ctx.attempt, "round": ctx.round, **found}
            self._known[member] = rec
            self._append(rec)
            self.alerts.record(client=member, kind="proven culprit", source="server", attempt=ctx.attempt,
                               detail=f"{found['reason']}; excluded from later attempts")
            log(logger, "member excluded from later attempts: proven culprit", level=logging.ERROR,
                client=member, attempt=ctx.attempt, reason=found["reason"])

    def _append(self, rec: dict[str, Any]) -> None:
        line = (json.dumps(rec, sort_keys=True) + "\n").encode()
        try:
            append_durably(self.path, line)
        except OSError as exc:  # the exclusion holds in memory; the ERROR line says it is not kept
            log(logger, "could not keep the culprit record", level=logging.ERROR, path=str(self.path),
                error=exc.strerror or str(exc))
