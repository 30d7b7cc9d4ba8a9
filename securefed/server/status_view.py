"""``securefed status``: the round log's history joined with the running server's live state.

Shown: whether the server runs at all (a dead one is shown as dead, not as a round whose seconds keep
ticking), the attempt and stage open now with its time left and the bytes moved so far, each member
(last seen, what it is doing: training step i of n, sitting out for its budget, refused; epsilon
spent by the signed ledger entries it reported here), security alerts, the last attempts, and the
anchors an auditor passes to ``audit verify``. ``--watch`` redraws it every few seconds.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

from securefed.errors import SecureFedError
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.events import DpEvent
from securefed.sanitize import clean, clean_tree
from securefed.server.culprits import read_culprits
from securefed.server.livestatus import read_live, server_alive
from securefed.server.roundlog import AttemptStatus, RoundLog
from securefed.server.security_log import PER_SOURCE_PER_WINDOW
from securefed.server.security_log import summary as alert_summary


def gather(state_dir: Path, rounds_target: int, last: int) -> dict[str, Any]:
    live = read_live(state_dir)
    if live is not None and not (state_dir / "rounds.sqlite").exists():  # a first start: no round log yet
        attempts, completed, events, heads, keys = [], 0, [], {}, {}
    else:
        log = RoundLog(state_dir / "rounds.sqlite", readonly=True)
        try:
            attempts, completed = log.attempts(limit=last), log.completed_rounds()
            events, heads, keys = log.privacy_events(), log.ledger_heads(), log.identity_keys()
        finally:
            log.close()
    alive, line = server_alive(live)
    members: dict[str, dict[str, Any]] = {c: dict(m) for c, m in ((live or {}).get("members") or {}).items()}
    for c, m in members.items():  # a member's heartbeat figure, until a signed entry of its ledger says more
        if m.get("heartbeat_epsilon") is not None:
            m["epsilon"], m["epsilon_source"] = m.pop("heartbeat_epsilon"), "heartbeat (the member's word)"
        if not alive:  # what the server last knew; nothing is connected to a server that is not running
            m["connected"] = None
    for c, eps in _epsilons(events).items():
        members.setdefault(c, {}).update(epsilon=eps, epsilon_source="signed ledger entries reported here")
    return {"server": {"alive": alive, "line": line}, "rounds_target": rounds_target, "completed_rounds": completed,
            "live": (live or {}).get("status") if alive else None, "members": members,
            "attempts": [a.to_json() for a in attempts], "privacy_events": len(events),
            "security_alerts": alert_summary(state_dir),
            "excluded": {m: r.get("reason") for m, r in read_culprits(state_dir).items()},
            "ledger_heads": {c: {"length": n, "entry_hash": h} for c, (n, h) in heads.items()}, "identity_keys": keys,
            "_server_seen": float(((live or {}).get("server") or {}).get("updated_at") or 0)}


def _epsilons(events) -> dict[str, float | None]:
    """Epsilon per member from the signed entries it reported (its own accountant and delta)."""
    by: dict[str, list[DpEvent]] = defaultdict(list)
    for e in events:
        try:
            by[e.client_id].append(DpEvent.from_json(e.event))
        except SecureFedError:
            continue
    out: dict[str, float | None] = {}
    for c, evs in by.items():
        try:
            out[c] = compute_epsilon(evs, evs[0].delta, evs[0].accountant)
        except (SecureFedError, ValueError):
            out[c] = None
    return out


def render(st: dict[str, Any], out: TextIO) -> None:
    now = time.time()
    p = lambda *a: print(clean(" ".join(map(str, a))), file=out)  # noqa: E731 - peers' text, made inert
    p(f"server: {st['server']['line']}")
    live = st["live"]
    head = f"rounds completed: {st['completed_rounds']}/{st['rounds_target']}   privacy events recorded: {st['privacy_events']}"
    p(head)
    if live and live.get("attempt"):
        p(f"now: attempt {live['attempt']} (round {live['round']}), stage {live['stage'] or 'apply'}"
          + (f", {live['stage_left_s']:.0f} s to its deadline" if live.get("stage_left_s") is not None else "")
          + f"; bytes in {_bytes(live['bytes_in'])}, out {_bytes(live['bytes_out'])}")
    elif live:
        p(f"now: {live['state']}: {live.get('detail') or ''}".rstrip(": "))
    if st["members"]:
        p(f"{'member':<16} {'last seen':<18} {'epsilon spent':<22} state")
        for c, m in sorted(st["members"].items()):
            seen = _ago(now - m["last_seen"]) if m.get("last_seen") else "-"
            if m.get("last_seen") and m.get("connected") is False:
                seen += " (gone)"
            eps = m.get("epsilon")
            eps_s = "-" if eps is None else f"{eps:.4g}"
            if m.get("target_epsilon"):
                eps_s += f" of {m['target_epsilon']:g}"
            if eps is not None and str(m.get("epsilon_source", "")).startswith("heartbeat"):
                eps_s += " (said)"  # not yet backed by a signed ledger entry reported here
            p(f"{c:<16} {seen:<18} {eps_s:<22} {_member_state(m)}")
    _alerts(st, p)
    _attempts(st, out, now)


def _alerts(st: dict[str, Any], p) -> None:
    """The newest alert of each (source, kind) with how many came this hour: one source cannot push
    the others out of view, however many it sends."""
    al = st["security_alerts"]
    for g in al["groups"]:
        a = g["newest"]
        who = f"reported by {g['client']}" if g["source"] == "member" else f"member {g['client']}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(a.get("at") or 0)))
        many = f" [{g['count']} x {g['kind']} from {g['client']} in the last hour]" if g["count"] > 1 else ""
        p(f"SECURITY {when}  {g['kind']} ({who}" + (f", attempt {a['attempt']}" if a.get("attempt") else "")
          + f"): {a.get('detail')}{many}")
    if al["more_groups"]:
        p(f"SECURITY ... and {al['more_groups']} more (source, kind) groups: securefed status --json")
    for r in al["by_address"]:
        if int(r["count"] or 0) > PER_SOURCE_PER_WINDOW:
            p(f"SECURITY {r['count']} x {r['kind']} from address {r['address']} in the last hour")
    for m, why in sorted(st.get("excluded", {}).items()):
        p(f"EXCLUDED {m}: proven culprit, never drawn again: {why}")


def _member_state(m: dict[str, Any]) -> str:
    if m.get("revoked"):
        return f"REVOKED ({m['revoked']}): refused at every call, never drawn again"
    stopped = m.get("connected", False) is None  # the server is not running: only what it last decided holds
    if m.get("refused") and not stopped:
        return f"refused in this attempt: {m['refused']}"
    if m.get("sits_out"):  # its first clause; the attempt's declines below carry the whole reason
        return f"sits out: {m['sits_out'].split(': ', 1)[0]}"
    if m.get("left_out"):
        return f"left out: {m['left_out']}"
    if stopped:
        return "unknown: the server is not running"
    if m.get("activity") == "training" and m.get("total_steps"):
        return f"training: step {m['step']} of {m['total_steps']}"
    return m.get("activity") or ("connected" if m.get("connected") else "")


def _attempts(st: dict[str, Any], out: TextIO, now: float) -> None:
    p = lambda *a: print(clean(" ".join(map(str, a))), file=out)  # noqa: E731 - declines carry members' text
    dead_at = None if st["server"]["alive"] else (st["_server_seen"] or None)
    p(f"{'attempt':>7} {'round':>5} {'status':<9} {'stage':<14} {'cohort':>6} {'in':>3} {'drop':>4} "
      f"{'decl':>4} {'seconds':>8}  detail")
    for a in st["attempts"]:
        secs = a["timings"].get("total")
        status = a["status"]
        if secs is None:
            # A running attempt of a dead server is not running: its clock stopped with the server.
            secs = (a["finished_at"] or dead_at or now) - a["started_at"]
            if status == AttemptStatus.RUNNING.value and dead_at:
                status = "stalled"
        detail = a["reason"] or (a["result_hash"][:16] if a["result_hash"] else "")
        if status == "stalled":
            detail = "the server died during it: abandoned when it restarts"
        p(f"{a['attempt']:>7} {a['round']:>5} {status:<9} {a['stage']:<14} {len(a['cohort']):>6} "
          f"{len(a['survivors']):>3} {len(a['dropouts']):>4} {len(a['declined']):>4} {secs:>8.2f}  {detail}")
        if a["timings"]:
            stages = ", ".join(f"{k}={v:.2f}s" for k, v in a["timings"].items() if k != "total")
            p(f"{'':>7} stages: {stages}")
        if a["dropouts"]:
            p(f"{'':>7} dropouts: {', '.join(a['dropouts'])}")
        for c, why in a["declined"].items():
            p(f"{'':>7} declined: {c}: {why}")
    if st["ledger_heads"]:
        p("anchors for the auditor (securefed audit verify LEDGER... <these>): ledger heads reported here and")
        p("the certified identity keys the entries verified under")
        for c, h in sorted(st["ledger_heads"].items()):
            p(f"  --expect-head {c}={h['length']}:{h['entry_hash']}")
        for c, k in sorted(st["identity_keys"].items()):
            p(f"  --public-key {c}={k}")


def show(state_dir: Path, rounds_target: int, *, last: int, as_json: bool, watch: float | None,
         out: TextIO | None = None) -> int:
    out = out or sys.stdout
    while True:
        st = gather(state_dir, rounds_target, last)
        if as_json:
            st.pop("_server_seen", None)
            print(json.dumps(clean_tree(st), indent=1, default=str), file=out)
        else:
            if watch and out.isatty():
                out.write("\033[H\033[2J")  # redraw in place
            render(st, out)
        out.flush()
        if not watch:
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
