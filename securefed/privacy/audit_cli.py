"""``securefed audit``: verify client privacy ledgers and write the audit report.

    securefed audit verify LEDGER... [--public-key CLIENT=HEX]... [--expect-head CLIENT=LEN:HASH]... [--json]
    securefed audit report LEDGER... --out DIR [--public-key CLIENT=HEX]...

``verify`` re-checks each ledger's hash chain and Ed25519 signatures, recomputes epsilon
independently (Google's dp-accounting on the integer RDP orders, and direct numerical integration at
the optimal order; dp-accounting's PLD for PRV ledgers) and compares it with the Opacus-derived
value, and checks the budget (see ``securefed.privacy.verify`` for tolerances). It exits 0 only if every ledger passes every check. ``report`` runs the same checks and
writes ``report.html`` (self-contained, inline SVG) and ``report.json``; it also exits non-zero if
any ledger failed. LEDGER is a SQLite ledger file or a JSON export of one.
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
        sp.add_argument("--public-key", action="append", default=[], metavar="CLIENT=HEX",
                        help="pin a client's Ed25519 identity public key (64 hex characters); repeatable")

    v = sub.add_parser("verify", help="re-verify chains, signatures, independent epsilon and budgets")
    common(v)
    v.add_argument("--expect-head", action="append", default=[], metavar="CLIENT=LEN:HASH",
                   help="anchor: the ledger length and newest entry hash recorded elsewhere (catches removal "
                        "of the newest entries); repeatable")
    v.add_argument("--json", action="store_true", help="print the results as one JSON object")
    v.set_defaults(handler=_verify)

    r = sub.add_parser("report", help="write report.html (inline SVG) and report.json")
    common(r)
    r.add_argument("--out", required=True, metavar="DIR", help="output directory")
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


def _verify(args: argparse.Namespace) -> int:
    from securefed.privacy import ledger, report, verify

    keys = _parse_keys(args.public_key)
    heads = {cid: ledger.LedgerHead(*head) for cid, head in _parse_heads(args.expect_head).items()}
    results = verify.verify_ledgers(args.ledgers, public_keys=keys, heads=heads)
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps(report.build_report(results), allow_nan=False))
    else:
        _print_results(results)
    if failed:
        reasons = "; ".join(f"{r.source}: {r.failures()[0].detail}" for r in failed)
        print(f"securefed: error: audit verify failed for {len(failed)} of {len(results)} ledger(s): {reasons}",
              file=sys.stderr)
        return 1
    if not args.json:
        print(f"all {len(results)} ledger(s) verified")
    return 0


def _report(args: argparse.Namespace) -> int:
    from securefed.privacy import report, verify

    results = verify.verify_ledgers(args.ledgers, public_keys=_parse_keys(args.public_key))
    html_path, json_path = report.write_report(results, args.out)
    print(f"report: {html_path}")
    print(f"data:   {json_path}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"securefed: error: {len(failed)} of {len(results)} ledger(s) failed verification; see {html_path}",
              file=sys.stderr)
        return 1
    return 0
