"""The audit report: one self-contained HTML page (inline CSS and hand-written SVG; no script, no
external resource) and ``report.json`` with the same numbers, for a privacy officer to sign.

Per ledger: the verification outcome (anchored or, loudly, not), and for every round the federation
context its member signed (federation id, plan digest, federation round, mode, cohort and threshold,
dataset size N, unit of privacy, base model) next to sigma, q, steps, clip norm C, delta, the round's
own epsilon, the cumulative epsilon, the remaining budget, the secure-RNG status and the config hash;
with the server's round log, the round's contributors, dropouts and declines too. Per dataset: the
total epsilon over every ledger and federation that spent budget on it, against the budget, and the
``delta < 1/N`` check. The chart shows cumulative epsilon per ledger over federation rounds.

JSON numbers: epsilon is ``null`` when it is unbounded (a round without noise).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securefed import versions
from securefed.errors import AccountingError, InvalidInput
from securefed.fsutil import atomic_write
from securefed.sanitize import clean_tree
from securefed.privacy.accountants import compute_epsilon, cumulative_epsilons
from securefed.privacy.events import utc_timestamp
from securefed.privacy.federation_context import RoundLogContext
from securefed.privacy.verify import LedgerVerification

REPORT_FORMAT = "securefed-privacy-report"
REPORT_VERSION = 2
# Colour-blind-safe palette (Okabe-Ito)
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
# Members with the same budget and noise draw the same curve: each also gets its own line pattern and
# marker shape, and its markers sit a few pixels apart, so every member stays visible (issue 19).
_DASHES = ("", "9 3", "3 3", "9 3 3 3", "14 4", "2 5")
_SHAPES = ("circle", "square", "triangle", "diamond", "triangle-down", "cross")
DODGE_PX = 4.0


def _marker(shape: str, x: float, y: float, color: str, title: str) -> str:
    r = 4.5
    if shape == "circle":
        el = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r - 0.5}" fill="{color}">'
        return f"{el}<title>{title}</title></circle>"
    pts = {"square": [(-r, -r), (r, -r), (r, r), (-r, r)], "triangle": [(0, -r - 1), (r, r), (-r, r)],
           "diamond": [(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)], "triangle-down": [(-r, -r), (r, -r), (0, r + 1)],
           "cross": [(-r, -1.5), (-1.5, -1.5), (-1.5, -r), (1.5, -r), (1.5, -1.5), (r, -1.5), (r, 1.5), (1.5, 1.5),
                     (1.5, r), (-1.5, r), (-1.5, 1.5), (-r, 1.5)]}[shape]
    path = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in pts)
    return f'<polygon points="{path}" fill="{color}"><title>{title}</title></polygon>'

EXPLANATIONS = {
    "per_round_vs_cumulative": (
        "Round epsilon is what one round costs taken alone (a per_round_epsilon cap applies to it). Cumulative "
        "epsilon composes every round so far and is the number the budget (target_epsilon) bounds. It is not the "
        "sum of the round epsilons: RDP and PRV composition is tighter than adding them up."),
    "authoritative": (
        "The authoritative epsilon of a ledger is the one its member enforced before every release: the accountant "
        "named in its budget (Opacus' RDP or PRV analysis), derived here again from the signed DP events. This "
        "report cross-checks it: Google's dp-accounting must agree on the integer RDP orders within 1e-6, and direct "
        "numerical integration at the optimal order within 1e-6 x (1 + epsilon); a disagreement fails the audit. "
        "dp-accounting's value over all RDP orders is shown for reference only: its fractional-order series is "
        "looser by design, so it can land slightly above the enforced value. Both are valid upper bounds on the "
        "true epsilon; members calibrate their noise with a margin so that both stay within the target."),
    "unit_of_privacy": (
        "Every guarantee protects one training example of the member's dataset of N examples: one JSONL record "
        "(truncated to max_seq_len tokens) - for chat data one whole conversation, every turn of it - or one "
        "token block of the demo corpus or of packed text records (unit 'token-block'). Someone with k examples "
        "in the data is protected as a group of k, which costs roughly k times the epsilon."),
    "cross_checks": (
        "These numbers check the code that computes epsilon, not what was spent: two independent RDP "
        "implementations must agree, and for PRV ledgers the PLD accountant must agree with PRV. The spend is the "
        "authoritative epsilon above. For a ledger enforced with PRV, the RDP bound is looser by design and can "
        "exceed the budget although the budget held."),
    "per_dataset": (
        "A member's budget is per dataset: every ledger and federation that spent budget on the same data "
        "(the same dataset fingerprint) counts towards one total."),
}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _attempt_for(ctx: RoundLogContext | None, event) -> dict | None:
    """The round log's attempt in which the server recorded exactly this signed event (None when it never
    was: another federation's event, or one whose report a crash cut off; its budget counts all the same)."""
    a = ctx.attempt_of(event.canonical_bytes()) if ctx is not None else None
    return a.to_dict() if a is not None else None


def client_report(v: LedgerVerification, round_log: RoundLogContext | None = None) -> dict[str, Any]:
    """The report.json record of one ledger."""
    h = v.header
    rec: dict[str, Any] = {
        "source": v.source,
        "client_id": h.client_id if h else v.claimed_client,
        "public_key": h.public_key.hex() if h else None,
        "budget": h.budget.to_dict() if h else None,
        "ledger_version": h.version if h else None,
        "dataset": v.dataset,
        "anchored": v.anchored,
        "verification": {
            "ok": v.ok,
            "events_verified": v.events_verified,
            "checks": [c.to_dict() for c in v.checks],
            "warnings": list(v.warnings),
        },
        "epsilon": _num(v.epsilon),
        "epsilon_rdp_opacus": _num(v.epsilon_rdp),
        "epsilon_rdp_dp_accounting": _num(v.epsilon_rdp_independent),
        "epsilon_prv_dp_accounting_pld": _num(v.epsilon_prv_independent),
        "insecure_rng_rounds": [e.round_id for e in v.events if not e.secure_rng],
        "rounds": [],
    }
    if h is None or not v.events:
        rec["remaining_budget"] = _num(h.budget.target_epsilon) if h else None
        return rec
    budget = h.budget
    try:
        cumulative = cumulative_epsilons(v.events, budget.delta, budget.accountant)
        alone = [compute_epsilon([e], budget.delta, budget.accountant) for e in v.events]
    except AccountingError as exc:
        rec["verification"]["warnings"].append(f"epsilon could not be computed: {exc}")
        cumulative = alone = [math.nan] * len(v.events)
    for i, (e, cum, one) in enumerate(zip(v.events, cumulative, alone, strict=True)):
        ctx = e.context.to_dict() if e.context is not None else None
        rec["rounds"].append({
            "index": i,
            "round_id": e.round_id,  # the attempt id (unique per protocol session)
            "federation_id": ctx["federation_id"] if ctx else None,
            "federation_round": ctx["federation_round"] if ctx else None,
            "context": ctx,
            "noise_multiplier": e.noise_multiplier,
            "sample_rate": e.sample_rate,
            "steps": e.steps,
            "clip_norm": e.clip_norm,
            "delta": e.delta,
            "accountant": e.accountant.value,
            "sampler": e.sampler.value,
            "round_epsilon": _num(one),
            "cumulative_epsilon": _num(cum),
            "remaining_budget": _num(budget.target_epsilon - cum),
            "secure_rng": e.secure_rng,
            "config_hash": e.config_hash,
            "timestamp": e.timestamp,
            "library_versions": e.library_versions.to_dict(),
            "attempt": _attempt_for(round_log, e),
        })
    last = cumulative[-1]
    if v.epsilon is None:
        rec["epsilon"] = _num(last)
    rec["remaining_budget"] = _num(budget.target_epsilon - last)
    return rec


def dataset_totals(results: Sequence[LedgerVerification]) -> list[dict[str, Any]]:
    """Per dataset fingerprint: every verified event of every ledger naming it, composed into one total at
    the smallest delta and against the smallest target among those ledgers (the conservative reading)."""
    groups: dict[str, list[LedgerVerification]] = {}
    for r in results:
        if r.dataset is not None and r.header is not None and r.events_verified:
            groups.setdefault(r.dataset, []).append(r)
    out = []
    for fp, rs in sorted(groups.items()):
        events = sorted((e for r in rs for e in r.events), key=lambda e: e.timestamp)
        delta = min(r.header.budget.delta for r in rs)
        target = min(r.header.budget.target_epsilon for r in rs)
        accountant = rs[0].header.budget.accountant
        sizes = [e.context.dataset_size for e in events if e.context is not None]
        try:
            total = compute_epsilon(events, delta, accountant)
        except AccountingError:
            total = math.inf
        out.append({
            "dataset": fp,
            "ledgers": [r.source for r in rs],
            "clients": sorted({r.header.client_id for r in rs}),
            "federations": sorted({e.context.federation_id for e in events if e.context is not None}),
            "events": len(events),
            "accountant": accountant.value,
            "delta": delta,
            "target_epsilon": target,
            "total_epsilon": _num(total),
            "within_budget": math.isfinite(total) and total <= target,
            "dataset_size": {"min": min(sizes), "max": max(sizes)} if sizes else None,
            "delta_below_1_over_n": all(delta < 1.0 / n for n in sizes) if sizes else None,
            "privacy_units": sorted({e.context.privacy_unit.value for e in events if e.context is not None}),
        })
    return out


def _federations(clients: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The federations the ledgers name, first seen first: modes, cohort and threshold, rounds, base models."""
    feds: dict[str, dict[str, Any]] = {}
    for c in clients:
        for r in c["rounds"]:
            ctx = r["context"]
            if ctx is None:
                continue
            f = feds.setdefault(ctx["federation_id"], {"federation_id": ctx["federation_id"], "first": r["timestamp"],
                                                         "modes": set(), "cohort_sizes": set(), "thresholds": set(),
                                                         "rounds": set(), "base_models": set(), "members": set()})
            f["first"] = min(f["first"], r["timestamp"])
            f["modes"].add(ctx["mode"])
            f["cohort_sizes"].add(ctx["cohort_size"])
            f["thresholds"].add(ctx["threshold"])
            f["rounds"].add(ctx["federation_round"])
            f["base_models"].add(ctx["base_model"] or "not named by the plan")
            f["members"].add(c["client_id"])
    return [{k: sorted(v) if isinstance(v, set) else v for k, v in f.items()}
            for f in sorted(feds.values(), key=lambda f: f["first"])]


def library_versions(clients: list[dict[str, Any]]) -> dict[str, Any]:
    """What each ledger's member ran at its latest release, and the libraries whose major.minor differ
    between members (different numerics: per-sample clipping, model code, kernels)."""
    latest = {c["source"]: (c["client_id"], c["rounds"][-1]["library_versions"]) for c in clients if c["rounds"]}
    differ = sorted(name for name in versions.NUMERICS_LIBRARIES
                    if len({versions.major_minor(v[1].get(name, "not recorded")) for v in latest.values()}) > 1)
    return {"members": [{"client_id": cid, "ledger": src, "versions": v} for src, (cid, v) in latest.items()],
            "differ": differ}


def build_report(results: Sequence[LedgerVerification], round_log: RoundLogContext | None = None,
                 evaluations: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    clients = [client_report(r, round_log) for r in results]
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated": utc_timestamp(),
        "all_verified": all(r.ok for r in results),
        "all_anchored": all(r.anchored for r in results),
        "round_log": round_log.source if round_log else None,
        "attempts": [a.to_dict() for a in round_log.attempts.values()] if round_log else [],
        "federations": _federations(clients),
        "datasets": dataset_totals(results),
        "library_versions": library_versions(clients),
        "explanations": EXPLANATIONS,
        "clients": clients,
        "evaluation": list(evaluations),  # securefed eval results given with --metrics, in order
    }


# --- SVG -----------------------------------------------------------------------------------------


def chart_positions(report: dict[str, Any]) -> tuple[dict[tuple[int, int], float], list[tuple[float, str]], str]:
    """x of each (client index, round index) on a federation-round axis, the ticks, and the axis title.

    Rounds of one federation sit at their round number; several federations are laid side by side in
    the order they first appear. Events without context (old ledgers) sit at their attempt id."""
    feds = [f["federation_id"] for f in report["federations"]]
    width = {f["federation_id"]: max(f["rounds"]) for f in report["federations"]}
    offset, at = {}, 0
    for f in feds:
        offset[f] = at
        at += width[f]
    xs: dict[tuple[int, int], float] = {}
    ticks: dict[float, str] = {}
    for ci, c in enumerate(report["clients"]):
        for ri, r in enumerate(c["rounds"]):
            fid = r["federation_id"]
            if fid is not None and fid in offset:
                x = offset[fid] + r["federation_round"]
                ticks[x] = f"{r['federation_round']}" if len(feds) < 2 else f"{feds.index(fid) + 1}:{r['federation_round']}"
            else:
                x = at + r["round_id"]
                ticks[x] = f"a{r['round_id']}"
            xs[(ci, ri)] = float(x)
    title = "federation round" if len(feds) < 2 else "federation:round (" + " | ".join(
        f"{i + 1} = {f}" for i, f in enumerate(feds)) + ")"
    if any(r["federation_id"] is None for c in report["clients"] for r in c["rounds"]):
        title += "; aN = attempt N of a ledger without round context"
    return xs, sorted(ticks.items()), title


def render_svg(report: dict[str, Any], width: int = 760, height: int = 360) -> str:
    """Cumulative epsilon per ledger over federation rounds (solid) against each budget (dashed)."""
    left, right, top, bottom = 64, 170, 20, 48
    pw, ph = width - left - right, height - top - bottom
    clients = report["clients"]
    xs, ticks, x_title = chart_positions(report)
    x_max = max([x for x in xs.values()] + [1.0])
    ys = [r["cumulative_epsilon"] for c in clients for r in c["rounds"] if r["cumulative_epsilon"] is not None]
    ys += [c["budget"]["target_epsilon"] for c in clients if c["budget"]]
    y_max = max(ys + [1e-9]) * 1.1

    def sx(x: float) -> float:
        return left + pw * x / x_max

    def sy(y: float) -> float:
        return top + ph - ph * min(y, y_max) / y_max

    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="cumulative epsilon per member over federation rounds" font-family="sans-serif" '
        'font-size="12">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    for k in range(6):  # y grid and labels
        y = y_max * k / 5
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    step = max(1, math.ceil(len(ticks) / 12))
    for x, label in ticks[::step]:
        parts.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{e(label)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{e(x_title)}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
                 'cumulative epsilon</text>')
    for ci, c in enumerate(clients):
        color = _PALETTE[ci % len(_PALETTE)]
        dash, shape = _DASHES[ci % len(_DASHES)], _SHAPES[ci % len(_SHAPES)]
        dodge = (ci - (len(clients) - 1) / 2) * DODGE_PX  # horizontal offset: identical curves stay apart
        name = e(str(c["client_id"] or c["source"]))
        if c["budget"]:
            yb = sy(c["budget"]["target_epsilon"])
            parts.append(f'<line x1="{left}" y1="{yb:.1f}" x2="{left + pw}" y2="{yb:.1f}" stroke="{color}" '
                         'stroke-dasharray="1 3" stroke-width="1.5" opacity="0.8"><title>budget of '
                         f'{name}: {c["budget"]["target_epsilon"]:g}</title></line>')
        pts = [(0.0, 0.0)] + [
            (xs[(ci, i)], r["cumulative_epsilon"] if r["cumulative_epsilon"] is not None else y_max)
            for i, r in enumerate(c["rounds"])
        ]
        path = " ".join(f"{sx(x) + dodge:.1f},{sy(y):.1f}" for x, y in pts)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dashed}/>')
        for i, r in enumerate(c["rounds"]):
            y = r["cumulative_epsilon"]
            shown = f"{y:.4g}" if y is not None else "unbounded"
            where = (f"round {r['federation_round']} of {r['federation_id'] or 'an unnamed federation'}"
                     if r["federation_id"] is not None else f"attempt {r['round_id']}")
            cx, cy = sx(xs[(ci, i)]) + dodge, sy(y if y is not None else y_max)
            title = f'{name}, {e(where)}: cumulative epsilon {shown}{" (INSECURE RNG)" if not r["secure_rng"] else ""}'
            if not r["secure_rng"]:  # an insecure-RNG round gets a big black-ringed red marker, whatever the client's
                parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="#d00" stroke="#000" stroke-width="2">'
                             f"<title>{title}</title></circle>")
            else:
                parts.append(_marker(shape, cx, cy, color, title))
        ly = top + 14 + 18 * ci  # legend: the member's line pattern and marker
        parts.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 34}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"{dashed}/>')
        parts.append(_marker(shape, left + pw + 22, ly - 4, color, name))
        parts.append(f'<text x="{left + pw + 40}" y="{ly}">{name}</text>')
    parts.append(f'<text x="{left + pw + 12}" y="{top + 14 + 18 * len(clients) + 6}" fill="#555">dotted: budget</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left;overflow-wrap:anywhere}tr.sub td{color:#555;font-size:12px;border-top:0}
.ok{color:#070;font-weight:bold}.fail{color:#fff;background:#c00;font-weight:bold;padding:2px 6px}
.alarm{background:#c00;color:#fff;padding:.6em;font-weight:bold;margin:.5em 0}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.4em;margin:.3em 0}
tr.insecure td{background:#fdd}code{font-size:12px}dt{font-weight:bold;margin-top:.5em}
"""


def _fmt(x: Any, digits: int = 6) -> str:
    if x is None:
        return "&infin;"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


def _short(h: str | None, n: int = 16) -> str:
    return "&ndash;" if not h else f"<code>{html.escape(h[:n])}&hellip;</code>"


def _verdict(report: dict[str, Any]) -> str:
    e = html.escape
    if not report["all_verified"]:
        bad = [c["client_id"] or c["source"] for c in report["clients"] if not c["verification"]["ok"]]
        return f'<div class="alarm">VERIFICATION FAILED for: {e(", ".join(map(str, bad)))}</div>'
    if not report["all_anchored"]:
        loose = [c["client_id"] or c["source"] for c in report["clients"] if not c["anchored"]]
        return ('<div class="alarm">NOT ANCHORED: chains, signatures, independent epsilon and budgets verified, but '
                f'{e(", ".join(map(str, loose)))} could not be checked against a head recorded elsewhere, so the removal '
                "of their newest entries cannot be detected. Re-run with --round-log (the server's rounds.sqlite) or "
                "--expect-head from securefed status before signing.</div>")
    return ('<p class="ok">All ledgers verified against their anchors: hash chains, signatures, anchored heads, '
            "independent epsilon and budgets.</p>")


def _context_html(report: dict[str, Any]) -> list[str]:
    e = html.escape
    out = ["<h2>Federation context</h2>"]
    if report["federations"]:
        out.append("<table><tr><th>federation</th><th>mode</th><th>cohort</th><th>threshold</th><th>rounds</th>"
                   "<th>members in these ledgers</th><th>base model</th></tr>")
        for f in report["federations"]:
            out.append(f'<tr><td class="l">{e(f["federation_id"] or "(unnamed)")}</td>'
                       f'<td class="l">{e(", ".join(f["modes"]))}</td><td>{e(", ".join(map(str, f["cohort_sizes"])))}</td>'
                       f'<td>{e(", ".join(map(str, f["thresholds"])))}</td><td>{e(", ".join(map(str, f["rounds"])))}</td>'
                       f'<td class="l">{e(", ".join(map(str, f["members"])))}</td>'
                       f'<td class="l">{e(", ".join(f["base_models"]))}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="warn">These ledgers record no federation context (format 1 events).</p>')
    if report["round_log"]:
        out.append(f"<p>From the server's round log <code>{e(report['round_log'])}</code>: every attempt, who "
                   "contributed to the sum, who dropped out, who declined and why.</p>")
        out.append("<table><tr><th>attempt</th><th>round</th><th>status</th><th>mode</th><th>cohort</th>"
                   "<th class='l'>contributors</th><th class='l'>dropouts</th><th class='l'>declines</th></tr>")
        for a in report["attempts"]:
            dec = "; ".join(f"{k}: {v}" for k, v in a["declined"].items())
            out.append(f'<tr><td>{a["attempt"]}</td><td>{a["round"]}</td><td class="l">{e(a["status"])}</td>'
                       f'<td class="l">{e(a["mode"])}</td><td>{len(a["cohort"])}</td>'
                       f'<td class="l">{e(", ".join(a["contributors"]))}</td><td class="l">{e(", ".join(a["dropouts"]))}</td>'
                       f'<td class="l">{e(dec)}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="warn">No round log given (--round-log): contributors, dropouts and declines per round '
                   "are not shown.</p>")
    return out + _evaluation_html(report.get("evaluation") or [])


def _evaluation_html(evals: list[dict[str, Any]]) -> list[str]:
    """What the privacy bought: each evaluated model's task metric and perplexity (securefed eval)."""
    if not evals:
        return []
    e = html.escape
    out = ["<h3>Task evaluation (securefed eval, in the order given: before, then after)</h3>",
           "<table><tr><th class='l'>model / adapter</th><th class='l'>data</th><th>records</th><th>metric</th>"
           "<th>task metric</th><th>change</th><th>perplexity</th><th>change</th></tr>"]
    for ev in evals:
        change = ev.get("task_metric_change")
        pchange = ev.get("perplexity_change")
        out.append(f'<tr><td class="l">{e(ev["adapter"] or ev["model"] + " (no adapter)")}</td>'
                   f'<td class="l">{e(ev["data"])}</td><td>{ev["records"]}</td><td>{e(str(ev["metric"]))}</td>'
                   f'<td>{_fmt(ev["task_metric"], 4)}</td><td>{"&ndash;" if change is None else f"{change:+.4f}"}</td>'
                   f'<td>{_fmt(ev["perplexity"], 5)}</td><td>{"&ndash;" if pchange is None else f"{pchange:+.3f}"}</td></tr>')
    out.append("</table>")
    return out


def _versions_html(report: dict[str, Any]) -> list[str]:
    e = html.escape
    lv = report["library_versions"]
    libs = ("securefed", *versions.NUMERICS_LIBRARIES)
    out = ["<h2>Library versions</h2>", "<p>What each member trained with at its latest release (from its signed "
           "DP events). A different major.minor version of a numerics library can change the numbers a member "
           "computes.</p>"]
    if lv["differ"]:
        out.append(f'<p class="warn">Members ran different major.minor versions of: {e(", ".join(lv["differ"]))}.</p>')
    out.append("<table><tr><th>client</th>" + "".join(f"<th>{n}</th>" for n in libs) + "</tr>")
    for m in lv["members"]:
        cells = "".join(f'<td class="{"warn" if n in lv["differ"] else "l"}">{e(m["versions"].get(n, "not recorded"))}</td>'
                        for n in libs)
        out.append(f'<tr><td class="l">{e(str(m["client_id"]))}</td>{cells}</tr>')
    out.append("</table>")
    return out


def _datasets_html(report: dict[str, Any]) -> list[str]:
    e = html.escape
    out = ["<h2>Per dataset</h2>", f"<p>{e(EXPLANATIONS['per_dataset'])}</p>"]
    if not report["datasets"]:
        return [*out, '<p class="warn">No ledger names its dataset (format 1 ledgers): totals per dataset cannot be '
                      "formed.</p>"]
    out.append("<table><tr><th>dataset</th><th>members</th><th>federations</th><th>ledgers</th><th>events</th>"
               "<th>unit</th><th>N</th><th>&delta;</th><th>&delta; &lt; 1/N</th><th>total &epsilon;</th>"
               "<th>target &epsilon;</th><th>within</th></tr>")
    for d in report["datasets"]:
        n = d["dataset_size"]
        n_text = "&ndash;" if not n else str(n["min"]) if n["min"] == n["max"] else f"{n['min']}-{n['max']}"
        ok = '<span class="ok">yes</span>' if d["within_budget"] else '<span class="fail">NO</span>'
        dn = {True: '<span class="ok">yes</span>', False: '<span class="fail">NO</span>', None: "&ndash;"}[
            d["delta_below_1_over_n"]]
        out.append(f'<tr><td class="l">{_short(d["dataset"])}</td><td class="l">{e(", ".join(d["clients"]))}</td>'
                   f'<td class="l">{e(", ".join(d["federations"]))}</td><td>{len(d["ledgers"])}</td><td>{d["events"]}</td>'
                   f'<td class="l">{e(", ".join(d["privacy_units"]))}</td>'
                   f'<td>{n_text}</td>'
                   f'<td>{_fmt(d["delta"])}</td><td>{dn}</td><td>{_fmt(d["total_epsilon"])}</td>'
                   f'<td>{_fmt(d["target_epsilon"])}</td><td>{ok}</td></tr>')
    out.append("</table>")
    return out


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>securefed privacy audit report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>securefed privacy audit report</h1>",
        f"<p>Generated {e(report['generated'])}. {len(report['clients'])} ledger(s). Epsilon is derived from each "
        "ledger's DP events with the accountant named in its budget (Opacus analysis) and recomputed "
        "independently with Google's dp-accounting.</p>",
        _verdict(report),
    ]
    insecure = [c["client_id"] for c in report["clients"] if c["insecure_rng_rounds"]]
    if insecure:
        out.append(f'<div class="alarm">INSECURE RNG: {e(", ".join(map(str, insecure)))} trained rounds with a '
                   "non-cryptographic noise source; their DP guarantee does not hold against an adversary who can "
                   "predict the noise.</div>")
    out.append("<h2>How to read these numbers</h2><dl>")
    for title, key in (("Unit of privacy", "unit_of_privacy"), ("Per-round and cumulative epsilon",
                                                               "per_round_vs_cumulative"),
                       ("Which epsilon is authoritative", "authoritative")):
        out.append(f"<dt>{title}</dt><dd>{e(EXPLANATIONS[key])}</dd>")
    out.append("</dl>")
    out += _context_html(report)
    out += _versions_html(report)
    out += _datasets_html(report)
    out.append("<h2>Cumulative epsilon over federation rounds</h2>")
    out.append(render_svg(report))
    out.append("<h2>Summary</h2><table><tr><th>client</th><th>verified</th><th>anchored</th><th>accountant</th>"
               "<th>delta</th><th>target &epsilon;</th><th>spent &epsilon; (authoritative)</th><th>remaining</th>"
               "<th>rounds</th></tr>")
    for c in report["clients"]:
        b = c["budget"] or {}
        status = '<span class="ok">yes</span>' if c["verification"]["ok"] else '<span class="fail">NO</span>'
        anch = '<span class="ok">yes</span>' if c["anchored"] else '<span class="fail">NO</span>'
        out.append(
            f'<tr><td class="l">{e(str(c["client_id"]))}</td><td>{status}</td><td>{anch}</td>'
            f"<td>{e(str(b.get('accountant')))}</td>"
            f"<td>{_fmt(b.get('delta'))}</td><td>{_fmt(b.get('target_epsilon'))}</td><td>{_fmt(c['epsilon'])}</td>"
            f"<td>{_fmt(c.get('remaining_budget'))}</td><td>{len(c['rounds'])}</td></tr>"
        )
    out.append("</table>")
    # Reference values that check the accounting code, kept apart from the spend: a PRV ledger's RDP bound
    # is looser and may exceed its budget without anything being wrong.
    out.append(f"<h3>Cross-checks of the accounting (not the spend)</h3><p>{e(EXPLANATIONS['cross_checks'])}</p>"
               "<table><tr><th>client</th><th>enforced by</th><th>RDP (Opacus)</th>"
               "<th>RDP (dp-accounting, all orders)</th><th>PLD (dp-accounting)</th></tr>")
    for c in report["clients"]:
        b = c["budget"] or {}
        out.append(
            f'<tr><td class="l">{e(str(c["client_id"]))}</td><td>{e(str(b.get("accountant")))}</td>'
            f"<td>{_fmt(c['epsilon_rdp_opacus'])}</td><td>{_fmt(c['epsilon_rdp_dp_accounting'])}</td>"
            # The PLD cross-check runs only for PRV-enforced ledgers: say "not computed", not infinity.
            f"<td>{_fmt(c['epsilon_prv_dp_accounting_pld']) if b.get('accountant') == 'prv' else 'n/a'}</td></tr>"
        )
    out.append("</table>")
    for c in report["clients"]:
        out += _client_html(c, bool(report["round_log"]))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _client_html(c: dict[str, Any], report_has_log: bool = False) -> list[str]:
    e = html.escape
    b = c["budget"] or {}
    out = [f"<h2>Client {e(str(c['client_id']))}</h2>",
           f"<p>Ledger <code>{e(c['source'])}</code> (format {e(str(c['ledger_version']))}); public key "
           f"<code>{e(str(c['public_key']))}</code>; dataset {_short(c['dataset'])}; budget &epsilon; = "
           f"{_fmt(b.get('target_epsilon'))}, &delta; = {_fmt(b.get('delta'))}, per-round cap "
           f"{_fmt(b.get('per_round_epsilon')) if b.get('per_round_epsilon') else 'none'}, accountant "
           f"{e(str(b.get('accountant')))}.</p>"]
    if not c["verification"]["events_verified"]:
        out.append('<div class="alarm">The rows below are UNVERIFIED: the ledger failed verification.</div>')
    out.append("<table><tr><th>check</th><th>result</th><th class='l'>detail</th></tr>")
    for chk in c["verification"]["checks"]:
        res = '<span class="ok">pass</span>' if chk["ok"] else '<span class="fail">FAIL</span>'
        out.append(f'<tr><td class="l">{e(chk["name"])}</td><td>{res}</td><td class="l">{e(chk["detail"])}</td></tr>')
    out.append("</table>")
    for w in c["verification"]["warnings"]:
        cls = "alarm" if w.startswith(("INSECURE", "NOT ANCHORED")) else "warn"
        out.append(f'<div class="{cls}">{e(w)}</div>')
    cols = 15
    out.append("<table><tr><th>#</th><th>round</th><th>attempt</th><th>mode</th><th>cohort / t</th><th>N</th>"
               "<th>&sigma;</th><th>q</th><th>steps</th><th>C</th><th>&delta;</th><th>round &epsilon;</th>"
               "<th>cumulative &epsilon;</th><th>remaining</th><th>secure RNG</th></tr>")
    for r in c["rounds"]:
        rng = "yes" if r["secure_rng"] else '<span class="fail">NO</span>'
        ctx = r["context"] or {}
        a = r["attempt"]
        who = ("" if a is None and not report_has_log else "not reported to this server" if a is None else
               e(f"{a['status']}: {len(a['contributors'])} in ({', '.join(a['contributors'])}); "
                 f"{len(a['dropouts'])} dropped; {len(a['declined'])} declined"))
        cls = "" if r["secure_rng"] else "insecure"
        out.append(
            f'<tr class="{cls}"><td>{r["index"]}</td><td>{ctx.get("federation_round", "&ndash;")}</td>'
            f'<td>{r["round_id"]}</td><td>{e(str(ctx.get("mode", "-")))}</td>'
            f'<td>{ctx.get("cohort_size", "-")} / {ctx.get("threshold", "-")}</td><td>{ctx.get("dataset_size", "-")}</td>'
            f"<td>{_fmt(r['noise_multiplier'], 4)}</td><td>{_fmt(r['sample_rate'], 4)}</td><td>{r['steps']}</td>"
            f"<td>{_fmt(r['clip_norm'], 4)}</td><td>{_fmt(r['delta'], 3)}</td>"
            f"<td>{_fmt(r['round_epsilon'], 4)}</td><td>{_fmt(r['cumulative_epsilon'], 5)}</td>"
            f"<td>{_fmt(r['remaining_budget'], 4)}</td><td>{rng}</td></tr>"
        )
        # The wide, textual part of the round on a line of its own: the table fits a page.
        fed = e(ctx["federation_id"] or "(unnamed)") if ctx else "&ndash;"
        out.append(
            f'<tr class="sub {cls}"><td></td><td class="l" colspan="{cols - 1}">federation {fed}; plan '
            f'{_short(ctx.get("plan_sha256"), 12)}; config {_short(r["config_hash"], 12)}; {e(r["timestamp"])}'
            f'{"; " + who if who else ""}</td></tr>'
        )
    out.append("</table>")
    return out


def write_report(results: Sequence[LedgerVerification], out_dir: str | Path,
                 round_log: RoundLogContext | None = None,
                 evaluations: Sequence[dict[str, Any]] = ()) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir``; return their paths."""
    if not results:
        raise InvalidInput("no ledgers to report on: pass at least one ledger file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = clean_tree(build_report(results, round_log, evaluations))  # ledgers are members' files: their text made inert
    html_path, json_path = out_dir / "report.html", out_dir / "report.json"
    atomic_write(json_path, (json.dumps(report, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    atomic_write(html_path, render_html(report).encode("utf-8"))
    return html_path, json_path
