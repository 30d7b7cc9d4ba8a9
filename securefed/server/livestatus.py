"""The coordinator's live state: for ``GetStatus``, and on disk as ``state_dir/live.json`` for ``securefed status``.

The round log keeps history. What only the running server knows, it rewrites here every
``INTERVAL_S`` (atomically, without fsync: it is a view, not state): that it is alive at all (pid,
host, time), the attempt and stage open now with its deadline and the bytes moved so far, and per
member its last sign of life, what its last heartbeat said (training step i of n, ...), whether it
sits out for its budget. A file not rewritten for ``DEAD_AFTER_S`` means the server is dead (killed,
crashed, host down), whatever the round log says; ``securefed status`` shows it as dead.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefed.protocol.stages import STAGE_NAMES
from securefed.sanitize import clean
from securefed.server.exclusion import left_out
from securefed.transport._generated import federation_pb2 as pb

if TYPE_CHECKING:  # the coordinator imports this module
    from securefed.server.coordinator import Coordinator

LIVE_FILE = "live.json"
INTERVAL_S = 1.0
DEAD_AFTER_S = 10.0

_ACTIVITY = {pb.MEMBER_ACTIVITY_PREPARING: "preparing", pb.MEMBER_ACTIVITY_TRAINING: "training",
             pb.MEMBER_ACTIVITY_PROTECTING: "protecting its update", pb.MEMBER_ACTIVITY_WAITING: "waiting"}


def status_of(co: Coordinator) -> dict[str, Any]:
    """What the coordinator is doing now (GetStatus and the ``server``/``attempt`` parts of live.json)."""
    with co.lock:
        mb = co.mailbox
        ctx, ph = mb.ctx, mb.phase
        return {
            "state": co.state.value,
            "attempt": ctx.attempt if ctx else None,
            "round": ctx.round if ctx else (co.global_ckpt.round if co.global_ckpt else 0),
            "stage": STAGE_NAMES[ph.stage] if ph else None,
            "stage_code": ph.stage if ph else pb.STAGE_UNSPECIFIED,
            "stage_left_s": round(max(0.0, ph.deadline - time.monotonic()), 1) if ph else None,
            "connected": mb.connected(),
            "registered": len(mb.clients),
            "cohort": list(ctx.cohort) if ctx else [],
            "dropouts": sorted(ctx.dropouts) if ctx else [],
            "bytes_in": ctx.bytes_in if ctx else 0,
            "bytes_out": ctx.bytes_out if ctx else 0,
            "completed_rounds": co.roundlog.completed_rounds(),
            "global_digest": co.global_ckpt.digest if co.global_ckpt else None,
            "detail": co.detail,
            "ending": co.ending,
        }


def members_of(co: Coordinator) -> dict[str, dict[str, Any]]:
    """Per registered member: last seen, what its last heartbeat said, whether it sits out."""
    now = time.monotonic()
    with co.lock:
        mb = co.mailbox
        connected = set(mb.connected())
        out_of_cohorts = left_out(mb, connected)
        out = {}
        for c, info in sorted(mb.clients.items()):
            m: dict[str, Any] = {"last_seen": info.last_seen_wall, "connected": c in connected}
            hb = info.heartbeat
            if hb is not None and mb.ctx is not None and hb.header.round == mb.ctx.attempt:
                m["activity"] = _ACTIVITY.get(hb.activity, "working")
                if hb.activity == pb.MEMBER_ACTIVITY_TRAINING:
                    m["step"], m["total_steps"] = int(hb.step), int(hb.total_steps)
            if hb is not None and hb.target_epsilon:  # the member's word; status prefers its signed entries
                m["heartbeat_epsilon"], m["target_epsilon"] = hb.epsilon_spent, hb.target_epsilon
            if info.exhausted and info.exhausted_until > now:
                m["sits_out"] = info.exhausted
            if c in out_of_cohorts:  # server.exclusion: revoked, unfit, lost, or its disk is full
                m["left_out"] = out_of_cohorts[c]
            if info.revoked:
                m["revoked"] = info.revoked
            if mb.ctx is not None and c in mb.liveness.refused:
                m["refused"] = mb.liveness.refused[c]
            out[c] = m
        return out


def snapshot(co: Coordinator) -> dict[str, Any]:
    return {"server": {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": time.time(),
                       "running": True},
            "status": status_of(co), "members": members_of(co)}


def write_live(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


class LiveStatusWriter:
    """Rewrites ``live.json`` every ``interval_s`` until ``stop()``, which writes ``running: false``."""

    def __init__(self, co: Coordinator, *, interval_s: float = INTERVAL_S) -> None:
        self.co = co
        self.path = co.state_dir / LIVE_FILE
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-status", daemon=True)

    def start(self) -> None:
        self._write(running=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._write(running=False)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write(running=True)

    def _write(self, *, running: bool) -> None:
        try:
            data = snapshot(self.co)
            data["server"]["running"] = running
            write_live(self.path, data)
        except OSError:
            pass  # a status view that cannot be written (disk full) must not stop the federation


class StartingBeacon:
    """While the server starts (certificates, fingerprinting the base model, the round-0 adapter: minutes
    for a large model), ``live.json`` says so every ``interval_s``, so that ``securefed status`` shows
    "starting" rather than "not running". A context manager; the ``LiveStatusWriter`` takes over."""

    def __init__(self, state_dir: Path, *, interval_s: float = INTERVAL_S) -> None:
        self.path = Path(state_dir) / LIVE_FILE
        self.interval_s = interval_s
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-starting", daemon=True)

    def __enter__(self) -> StartingBeacon:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if exc[0] is not None:  # it did not start: say so, not "starting" until the file goes stale
            data = self._data()
            data["server"]["running"] = False
            data["status"]["detail"] = "failed to start"
            self._write(data)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def _data(self) -> dict[str, Any]:
        return {"server": {"pid": os.getpid(), "host": socket.gethostname(), "updated_at": time.time(),
                           "running": True, "starting_since": self.started},
                "status": {"state": "starting", "detail": "reading certificates, fingerprinting the base model, "
                           "building the round-0 adapter"}, "members": {}}

    def _write(self, data: dict[str, Any] | None = None) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_live(self.path, data or self._data())
        except OSError:
            pass  # a status view that cannot be written must not stop the server from starting


def read_live(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / LIVE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def server_alive(live: dict[str, Any] | None, now: float | None = None) -> tuple[bool, str]:
    """Whether the server that wrote ``live`` runs now, and a line saying so."""
    if live is None:
        return False, "not running (no live status: it has not run with this state_dir, or runs an older version)"
    srv = live.get("server") or {}
    age = (now or time.time()) - float(srv.get("updated_at") or 0)
    where = f"pid {srv.get('pid')} on {srv.get('host')}"
    if not srv.get("running"):
        return False, f"stopped ({where}, {_ago(age)}){_how_it_ended(live.get('status') or {})}"
    if srv.get("host") == socket.gethostname() and not _pid_alive(srv.get("pid")):
        return False, f"DEAD: {where} is gone (killed or crashed {_ago(age)}); a restart resumes from the last round"
    if age > DEAD_AFTER_S:
        return False, f"DEAD or hung: {where} silent for {age:.0f} s; a restart resumes from the last round"
    if srv.get("starting_since"):
        since = (now or time.time()) - float(srv["starting_since"])
        return True, f"starting ({where}, for {_ago(since).removesuffix(' ago')})"
    return True, f"running ({where})"


def _how_it_ended(status: dict[str, Any]) -> str:
    """After a stop, whether the federation is over (the members got its signed end) or resumes."""
    ending, detail = status.get("ending"), clean(status.get("detail") or "", 200)
    if ending == "completed":
        return f": the federation is finished ({detail}; members were told)"
    if ending in ("budget_exhausted", "gave_up"):
        return f": the federation is over, {ending.replace('_', ' ')} ({detail}; members were told)"
    return "; the federation is not over: a restart resumes it from the last completed round"


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that id: cannot tell, assume alive
    return True
