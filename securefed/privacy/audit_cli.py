"""``securefed audit``: verify client privacy ledgers and write the audit report.

    securefed audit verify LEDGER... [--round-log rounds.sqlite] [--public-key CLIENT=HEX]...
                           [--expect-head CLIENT=LEN:HASH]... [--require-anchors] [--json]
    securefed audit report LEDGER... --out DIR [the same anchors and options]

``verify`` re-checks each ledger's hash chain and Ed25519 signatures, recomputes epsilon
independently (Google's dp-accounting on the integer RDP orders, and direct numerical integration at
the optimal order; dp-accounting's PLD for PRV ledgers) and compares it with the Opacus-derived
value, and checks the budget (see ``securefed.privacy.verify`` for tolerances). It exits 0 only if every ledger passes every check. ``report`` runs the same checks and
writes ``report.html`` (self-contained, inline SVG) and ``report.json``; it also exits non-zero if
any ledger failed. LEDGER is a SQLite ledger file or a JSON export of one.

Anchors. A ledger whose newest entries were cut is a shorter chain that verifies on its own; only a head
recorded elsewhere catches that. ``--round-log`` reads the heads and certified identity keys the server
recorded (its ``state_dir/rounds.sqlite``; also the per-round contributors, dropouts and declines for
the report); ``--expect-head`` / ``--public-key`` give them by hand (``securefed status`` prints them) and
win over the round log. Without an anchor a ledger is reported NOT ANCHORED; ``--require-anchors`` makes
that a failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from securefed.errors import InvalidInput

# The handlers import the verification modules themselves: they load numpy, pydantic, scipy and
# dp-accounting, which registering the subcommands (and so every `securefed --help`) must not pay for.


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="verify privacy ledgers and write the audit report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("ledgers", nargs="+", metavar="LEDGER", help="client ledger files (SQLite or JSON export)")
        sp.add_argument("--round-log", metavar="PATH",
                        help="the server's state_dir/rounds.sqlite: anchors (ledger heads, certified keys) and "
                             "each round's contributors, dropouts and declines")
        sp.add_argument("--public-key", action="append", default=[], metavar="CLIENT=HEX",
                        help="pin a client's Ed25519 identity public key (64 hex characters); repeatable")
        sp.add_argument("--expect-head", action="append", default=[], metavar="CLIENT=LEN:HASH",
                        help="anchor: the ledger length and newest entry hash recorded elsewhere (catches removal "
                             "of the newest entries); repeatable")
        sp.add_argument("--require-anchors", action="store_true",
                        help="fail (exit 1) when a ledger has no anchor, instead of warning")

    v = sub.add_parser("verify", help="re-verify chains, signatures, anchors, independent epsilon and budgets")
    common(v)
    v.add_argument("--json", action="store_true", help="print the results as one JSON object")
    v.set_defaults(handler=_verify)

    r = sub.add_parser("report", help="write report.html (inline SVG) and report.json, with the same checks")
    common(r)
    r.add_argument("--out", required=True, metavar="DIR", help="output directory")
    r.add_argument("--metrics", action="append", default=[], metavar="FILE",
                   help="a `securefed eval --json` result to show in the federation context; repeat it (before, "
                        "then after) to show what the federation's training changed")
    r.set_defaults(handler=_report)


def _parse_keys(items: list[str]) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for item in items:
        cid, sep, hexkey = item.partition("=")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            key = b""
        if not sep or not cid or len(key) != 32:
            raise InvalidInput(f"--public-key {item!r}: expected CLIENT=HEX with 64 hex characters")
        keys[cid] = key
    return keys


def _parse_heads(items: list[str]) -> dict[str, tuple[int, str]]:
    """``CLIENT=LENGTH:HASH`` items as ``{client: (length, hash)}`` (the fields of a ``LedgerHead``)."""
    heads = {}
    for item in items:
        cid, sep, rest = item.partition("=")
        length, sep2, h = rest.partition(":")
        if not (sep and sep2 and cid and length.isdigit() and len(h) == 64):
            raise InvalidInput(f"--expect-head {item!r}: expected CLIENT=LENGTH:SHA256HEX")
        try:
            bytes.fromhex(h)
        except ValueError:
            raise InvalidInput(f"--expect-head {item!r}: the hash must be 64 hex characters") from None
        heads[cid] = (int(length), h.lower())
    return heads


def _print_results(results) -> None:
    for r in results:
        status = "OK  " if r.ok else "FAIL"
        who = r.client_id or "?"
        eps = f" epsilon {r.epsilon:.6g}" if r.epsilon is not None else ""
        print(f"{status} {r.source} (client {who}){eps}")
        for c in r.checks:
            print(f"     [{'pass' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        for w in r.warnings:
            print(f"     [warn] {w}")


def _checked(args: argparse.Namespace):
    """Verify the ledgers with every anchor given (explicit ones over the round log's); return the
    results and the round log context (or None)."""
    from securefed.privacy import federation_context, ledger, verify

    keys = _parse_keys(args.public_key)
    required = set(keys)  # a ledger must be given for every key pinned by hand; the round log's pin those given
    heads = {cid: ledger.LedgerHead(*head) for cid, head in _parse_heads(args.expect_head).items()}
    ctx = federation_context.read_round_log(args.round_log) if args.round_log else None
    if ctx is not None:
        keys, heads = {**ctx.public_keys, **keys}, {**ctx.heads, **heads}
    results = verify.verify_ledgers(args.ledgers, public_keys=keys, heads=heads, required=required)
    others = sorted(set(ctx.public_keys) - {r.client_id for r in results}) if ctx is not None else []
    if others:  # one member auditing its own ledger(s): fine, and said
        print(f"round log: {', '.join(others)} took part too; their ledgers were not given (not audited here)",
              file=sys.stderr)
    return results, ctx


def _unanchored_line(results, required: bool) -> str | None:
    loose = [r.source for r in results if not r.anchored]
    if not loose:
        return None
    what = "error" if required else "warning"
    return (f"securefed: {what}: {len(loose)} of {len(results)} ledger(s) NOT ANCHORED ({', '.join(loose)}): "
            "the removal of their newest entries cannot be detected; pass --round-log (the server's rounds.sqlite) "
            "or --expect-head from securefed status")


def _verify(args: argparse.Namespace) -> int:
    from securefed.privacy import report

    results, ctx = _checked(args)
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps(report.build_report(results, ctx), allow_nan=False))
    else:
        _print_results(results)
    if failed:
        reasons = "; ".join(f"{r.source}: {r.failures()[0].detail}" for r in failed)
        print(f"securefed: error: audit verify failed for {len(failed)} of {len(results)} ledger(s): {reasons}",
              file=sys.stderr)
        return 1
    loose = _unanchored_line(results, args.require_anchors)
    if loose:
        print(loose, file=sys.stderr)
        if args.require_anchors:
            return 1
    if not args.json:
        print(f"all {len(results)} ledger(s) verified" + (", NOT all anchored (see above)" if loose else
                                                          " against their anchors"))
    return 0


def _report(args: argparse.Namespace) -> int:
    from securefed.evaluation.summary import read_evaluations
    from securefed.privacy import report

    evaluations = read_evaluations(args.metrics)
    results, ctx = _checked(args)
    html_path, json_path = report.write_report(results, args.out, ctx, evaluations)
    print(f"report: {html_path}")
    print(f"data:   {json_path}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"securefed: error: {len(failed)} of {len(results)} ledger(s) failed verification; see {html_path}",
              file=sys.stderr)
        return 1
    loose = _unanchored_line(results, args.require_anchors)
    if loose:
        print(loose, file=sys.stderr)
        return 1 if args.require_anchors else 0
    return 0
