"""The audit report: one self-contained HTML page (inline CSS and hand-written SVG; no script, no
external resource) and ``report.json`` with the same numbers.

Per client: the verification outcome, and for every round sigma, q, steps, clip norm C, delta,
accountant, the round's own epsilon, the cumulative epsilon, the remaining budget, the secure-RNG
status (flagged loudly when false) and the config hash. The plot shows cumulative epsilon per client
per ledger entry against each client's budget.

JSON numbers: epsilon is ``null`` when it is unbounded (a round without noise).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securefed.errors import AccountingError, InvalidInput
from securefed.fsutil import atomic_write
from securefed.privacy.accountants import compute_epsilon, cumulative_epsilons
from securefed.privacy.events import utc_timestamp
from securefed.privacy.verify import LedgerVerification

REPORT_FORMAT = "securefed-privacy-report"
# Colour-blind-safe palette (Okabe-Ito)
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def client_report(v: LedgerVerification) -> dict[str, Any]:
    """The report.json record of one ledger."""
    h = v.header
    rec: dict[str, Any] = {
        "source": v.source,
        "client_id": h.client_id if h else None,
        "public_key": h.public_key.hex() if h else None,
        "budget": h.budget.to_dict() if h else None,
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
        rec["rounds"].append({
            "index": i,
            "round_id": e.round_id,
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
        })
    last = cumulative[-1]
    if v.epsilon is None:
        rec["epsilon"] = _num(last)
    rec["remaining_budget"] = _num(budget.target_epsilon - last)
    return rec


def build_report(results: Sequence[LedgerVerification]) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "generated": utc_timestamp(),
        "all_verified": all(r.ok for r in results),
        "clients": [client_report(r) for r in results],
    }


# --- SVG -----------------------------------------------------------------------------------------


def render_svg(report: dict[str, Any], width: int = 760, height: int = 360) -> str:
    """Cumulative epsilon per client per ledger entry (solid) against each budget (dashed)."""
    left, right, top, bottom = 64, 170, 20, 48
    pw, ph = width - left - right, height - top - bottom
    clients = report["clients"]
    n_max = max([len(c["rounds"]) for c in clients] + [1])
    ys = [r["cumulative_epsilon"] for c in clients for r in c["rounds"] if r["cumulative_epsilon"] is not None]
    ys += [c["budget"]["target_epsilon"] for c in clients if c["budget"]]
    y_max = max(ys + [1e-9]) * 1.1

    def sx(i: float) -> float:
        return left + (pw * (i + 1) / n_max if n_max else 0)

    def sy(y: float) -> float:
        return top + ph - ph * min(y, y_max) / y_max

    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="cumulative epsilon per client per round" font-family="sans-serif" font-size="12">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    for k in range(6):  # y grid and labels
        y = y_max * k / 5
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    step = max(1, math.ceil(n_max / 10))
    for i in range(0, n_max, step):  # x ticks: ledger entry number
        parts.append(f'<text x="{sx(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{i + 1}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">rounds joined (ledger entry)</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
                 'cumulative epsilon</text>')
    for ci, c in enumerate(clients):
        color = _PALETTE[ci % len(_PALETTE)]
        name = e(str(c["client_id"] or c["source"]))
        if c["budget"]:
            yb = sy(c["budget"]["target_epsilon"])
            parts.append(f'<line x1="{left}" y1="{yb:.1f}" x2="{left + pw}" y2="{yb:.1f}" stroke="{color}" '
                         'stroke-dasharray="6 4" stroke-width="1.5"><title>budget of '
                         f'{name}: {c["budget"]["target_epsilon"]:g}</title></line>')
        pts = [(0.0, 0.0)] + [
            (float(i + 1), r["cumulative_epsilon"] if r["cumulative_epsilon"] is not None else y_max)
            for i, r in enumerate(c["rounds"])
        ]
        path = " ".join(f"{left + pw * x / n_max:.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, r in enumerate(c["rounds"]):
            y = r["cumulative_epsilon"]
            shown = f"{y:.4g}" if y is not None else "unbounded"
            # an insecure-RNG round gets a big black-ringed red marker, whatever the client's colour
            marker = 'r="6" fill="#d00" stroke="#000" stroke-width="2"' if not r["secure_rng"] else f'r="3.5" fill="{color}"'
            parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(y if y is not None else y_max):.1f}" {marker}><title>{name}, round {r["round_id"]}: epsilon {shown}'
                         f'{" (INSECURE RNG)" if not r["secure_rng"] else ""}</title></circle>')
        ly = top + 14 + 18 * ci  # legend
        parts.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 32}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{left + pw + 38}" y="{ly}">{name}</text>')
    parts.append(f'<text x="{left + pw + 12}" y="{top + 14 + 18 * len(clients) + 6}" fill="#555">dashed: budget</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}
.ok{color:#070;font-weight:bold}.fail{color:#fff;background:#c00;font-weight:bold;padding:2px 6px}
.alarm{background:#c00;color:#fff;padding:.6em;font-weight:bold;margin:.5em 0}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.4em;margin:.3em 0}
tr.insecure td{background:#fdd}code{font-size:12px}
"""


def _fmt(x: Any, digits: int = 6) -> str:
    if x is None:
        return "&infin;"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


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
    ]
    if report["all_verified"]:
        out.append('<p class="ok">All ledgers verified: hash chains, signatures, independent epsilon and budgets.</p>')
    else:
        bad = [c["client_id"] or c["source"] for c in report["clients"] if not c["verification"]["ok"]]
        out.append(f'<div class="alarm">VERIFICATION FAILED for: {e(", ".join(map(str, bad)))}</div>')
    insecure = [c["client_id"] for c in report["clients"] if c["insecure_rng_rounds"]]
    if insecure:
        out.append(f'<div class="alarm">INSECURE RNG: {e(", ".join(map(str, insecure)))} trained rounds with a '
                   "non-cryptographic noise source; their DP guarantee does not hold against an adversary who can "
                   "predict the noise.</div>")
    out.append("<h2>Cumulative epsilon</h2>")
    out.append(render_svg(report))
    out.append("<h2>Summary</h2><table><tr><th>client</th><th>verified</th><th>accountant</th><th>delta</th>"
               "<th>target &epsilon;</th><th>spent &epsilon;</th><th>remaining</th><th>rounds</th>"
               "<th>RDP (Opacus)</th><th>RDP (dp-accounting)</th><th>PLD (dp-accounting)</th></tr>")
    for c in report["clients"]:
        b = c["budget"] or {}
        status = '<span class="ok">yes</span>' if c["verification"]["ok"] else '<span class="fail">NO</span>'
        out.append(
            f'<tr><td class="l">{e(str(c["client_id"]))}</td><td>{status}</td><td>{e(str(b.get("accountant")))}</td>'
            f"<td>{_fmt(b.get('delta'))}</td><td>{_fmt(b.get('target_epsilon'))}</td><td>{_fmt(c['epsilon'])}</td>"
            f"<td>{_fmt(c.get('remaining_budget'))}</td><td>{len(c['rounds'])}</td>"
            f"<td>{_fmt(c['epsilon_rdp_opacus'])}</td><td>{_fmt(c['epsilon_rdp_dp_accounting'])}</td>"
            # The PLD cross-check runs only for PRV-enforced ledgers: say "not computed", not infinity.
            f"<td>{_fmt(c['epsilon_prv_dp_accounting_pld']) if b.get('accountant') == 'prv' else 'n/a'}</td></tr>"
        )
    out.append("</table>")
    for c in report["clients"]:
        b = c["budget"] or {}
        out.append(f"<h2>Client {e(str(c['client_id']))}</h2>")
        out.append(f"<p>Ledger <code>{e(c['source'])}</code>; public key <code>{e(str(c['public_key']))}</code>; "
                   f"budget &epsilon; = {_fmt(b.get('target_epsilon'))}, &delta; = {_fmt(b.get('delta'))}, "
                   f"per-round cap {_fmt(b.get('per_round_epsilon')) if b.get('per_round_epsilon') else 'none'}, "
                   f"accountant {e(str(b.get('accountant')))}.</p>")
        if not c["verification"]["events_verified"]:
            out.append('<div class="alarm">The rows below are UNVERIFIED: the ledger failed verification.</div>')
        out.append("<table><tr><th>check</th><th>result</th><th class='l'>detail</th></tr>")
        for chk in c["verification"]["checks"]:
            res = '<span class="ok">pass</span>' if chk["ok"] else '<span class="fail">FAIL</span>'
            out.append(f'<tr><td class="l">{e(chk["name"])}</td><td>{res}</td><td class="l">{e(chk["detail"])}</td></tr>')
        out.append("</table>")
        for w in c["verification"]["warnings"]:
            cls = "alarm" if w.startswith("INSECURE") else "warn"
            out.append(f'<div class="{cls}">{e(w)}</div>')
        out.append("<table><tr><th>#</th><th>round</th><th>&sigma;</th><th>q</th><th>steps</th><th>C</th>"
                   "<th>&delta;</th><th>accountant</th><th>round &epsilon;</th><th>cumulative &epsilon;</th>"
                   "<th>remaining</th><th>secure RNG</th><th>config hash</th><th>time (UTC)</th></tr>")
        for r in c["rounds"]:
            rng = "yes" if r["secure_rng"] else '<span class="fail">NO</span>'
            out.append(
                f'<tr class="{"" if r["secure_rng"] else "insecure"}"><td>{r["index"]}</td><td>{r["round_id"]}</td>'
                f"<td>{_fmt(r['noise_multiplier'])}</td><td>{_fmt(r['sample_rate'])}</td><td>{r['steps']}</td>"
                f"<td>{_fmt(r['clip_norm'])}</td><td>{_fmt(r['delta'])}</td><td>{e(r['accountant'])}</td>"
                f"<td>{_fmt(r['round_epsilon'])}</td><td>{_fmt(r['cumulative_epsilon'])}</td>"
                f"<td>{_fmt(r['remaining_budget'])}</td><td>{rng}</td>"
                f'<td class="l"><code>{e(r["config_hash"][:16])}&hellip;</code></td><td class="l">{e(r["timestamp"])}</td></tr>'
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(results: Sequence[LedgerVerification], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir``; return their paths."""
    if not results:
        raise InvalidInput("no ledgers to report on: pass at least one ledger file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(results)
    html_path, json_path = out_dir / "report.html", out_dir / "report.json"
    atomic_write(json_path, (json.dumps(report, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    atomic_write(html_path, render_html(report).encode("utf-8"))
    return html_path, json_path
