"""Independent verification of privacy ledgers, for an auditor who does not trust the code that wrote them.

``verify_ledger`` checks, in order, and reports every check by name:

1. ``header``: the header is canonical JSON, its SHA-256 matches, and it is signed by the public key
   it names; with ``expected_public_key`` that key must also be the client's certified key.
2. ``chain``: entries have contiguous sequence numbers from 0; each links to the previous hash (the
   first to the header hash); each hash is recomputed from the exact stored bytes; each Ed25519
   signature verifies; each event is a valid ``DpEvent`` of this client at the budget's delta and
   accountant. Any gap, reordering, changed byte or forged signature fails here.
3. ``anchor`` (optional): the chain is at least as long as, and agrees with, a head recorded elsewhere
   (the only way to catch removal of the newest entries).
4. ``rdp-crosscheck``: Google's ``dp-accounting`` (``RdpAccountant`` with
   ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` composed ``steps`` times per event) and
   Opacus agree on epsilon over the *integer* orders of Opacus' order set within relative
   ``RDP_INT_REL_TOL`` = 1e-6 (measured agreement: 4e-14 or better over sigma 0.3-10, q 1e-3-1,
   1-10^4 steps). Both evaluate the same closed-form binomial sum there, so any disagreement is a bug
   or a tampered number. Over *all* orders the two differ by design: dp-accounting's fractional-order
   series over-estimates (15% at order 1.1 on the reference run, checked against direct
   integration) and drops orders where it does not converge, so its all-order epsilon is shown for
   information (3e-5 relative above Opacus on the reference run; up to 2x in high-epsilon regimes).
5. ``rdp-direct``: the epsilon being enforced (Opacus, all orders) is recomputed at the order Opacus
   found optimal, with each mechanism's RDP obtained by direct numerical integration of the Renyi
   divergence of the subsampled Gaussian (scipy ``quad``; a third implementation, from first
   principles), within 1e-6 x (1 + epsilon).
6. ``prv-crosscheck`` (ledgers enforced with PRV): Opacus' PRV upper bound vs ``dp-accounting``'s PLD
   accountant (pessimistic, value discretisation 1e-3) within ``PRV_ABS_TOL`` = 2 x the PRV
   eps_error (0.02) + ``PRV_REL_TOL`` (1e-3) relative. The PRV value is reported as estimate + 0.01,
   so a gap of about 0.01 is expected (measured: 0.010 on the reference run).
7. ``budget``: epsilon under the ledger's own accountant is at most the target epsilon in the header.
8. ``per-round-cap`` (when the budget has one): each round's epsilon on its own is at most the cap.
9. ``delta-per-N`` (events with context): the budget's delta is below 1/N for the dataset size N each
   round sampled from (a delta of 1/N or more would allow leaking one record outright).

Warnings (not failures): rounds trained without a secure RNG; an unpinned public key; and, loudly,
a ledger checked without an anchor: removing its newest entries leaves a shorter chain that is just
as valid, so without ``--expect-head`` (or ``--round-log``) truncation cannot be detected.

A header that does not verify fails ``header`` as "header tampered", and that ledger still counts as
given for the client its header names (it is not reported as missing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import integrate

from securefed.errors import AccountingError, LedgerError, LedgerHeaderTampered, SecureFedError
from securefed.privacy.accountants import compute_epsilon
from securefed.privacy.events import AccountantName, DpEvent
from securefed.privacy.formulas import (
    DEFAULT_RDP_ORDERS,
    merge,
    rdp_curve,
    rdp_to_epsilon,
    rdp_to_epsilon_and_order,
)

# The dp-accounting computations live in their own module (noise calibration checks with them too).
from securefed.privacy.independent import PLD_DISCRETIZATION, independent_pld_epsilon, independent_rdp_epsilon  # noqa: F401
from securefed.privacy.ledger import (
    SQLITE_MAGIC,
    LedgerHead,
    LedgerHeader,
    VerifiedLedger,
    check_head,
    ledger_dataset,
    load_ledger,
    parse_header,
    read_rows,
)

RDP_INT_REL_TOL = 1e-6
RDP_DIRECT_TOL = 1e-6
PRV_ABS_TOL = 0.02
PRV_REL_TOL = 1e-3
NOT_ANCHORED = ("NOT ANCHORED: without --expect-head (or --round-log) the removal of this ledger's newest entries "
                "cannot be detected; the chain checked is only as long as the file says")


def direct_rdp(q: float, sigma: float, alpha: float) -> float:
    """RDP of one Poisson-subsampled Gaussian step at order ``alpha`` by numerical integration:

        A = E_{z ~ N(0, sigma^2)} [ ((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha ],  RDP = log(A) / (alpha - 1)

    (Mironov et al. 2019, the add-one direction, which dominates for this mechanism). Evaluated in log
    space around the two places the integrand lives (z ~ 0 and z ~ alpha). Shares no code with Opacus
    or dp-accounting. Absolute error in log(A) ~1e-15.
    """
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1:
        return alpha / (2 * sigma * sigma)
    s2 = sigma * sigma
    log1mq, logq = math.log1p(-q), math.log(q)

    def log_integrand(z):  # without the Gaussian's normalising constant
        return -z * z / (2 * s2) + alpha * np.logaddexp(log1mq, logq + (2 * z - 1) / (2 * s2))

    lo, hi = -40 * sigma - 1, alpha + 40 * sigma + 1
    peak = float(np.max(log_integrand(np.linspace(lo, hi, 4001))))
    points = sorted(set(np.linspace(0.0, alpha, 21).tolist()))
    val, _ = integrate.quad(lambda z: math.exp(float(log_integrand(z)) - peak), lo, hi, points=points,
                            limit=1000, epsabs=0, epsrel=1e-12)
    log_a = peak + math.log(val) - math.log(sigma * math.sqrt(2 * math.pi))
    return log_a / (alpha - 1)


def direct_epsilon_at_order(events: Sequence[DpEvent], delta: float, order: float) -> float:
    """Epsilon of the events at one RDP order, RDP by ``direct_rdp``, converted with the same
    formula the accountants use (Balle et al. 2020)."""
    mechs = merge((e.noise_multiplier, e.sample_rate, e.steps) for e in events)
    total = sum(steps * direct_rdp(q, sigma, order) for sigma, q, steps in mechs)
    if total == 0:
        return 0.0
    if math.isinf(total):
        return math.inf
    eps = total + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)
    return max(eps, 0.0)


def _close(a: float, b: float, *, rel: float, abs_: float = 0.0) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= abs_ + rel * max(abs(a), abs(b))


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class LedgerVerification:
    """Outcome for one ledger. ``events`` are the verified events, or (when the chain failed) the
    events that could still be parsed, with ``events_verified`` False."""

    source: str
    checks: tuple[Check, ...]
    warnings: tuple[str, ...] = ()
    header: LedgerHeader | None = None
    events: tuple[DpEvent, ...] = ()
    events_verified: bool = False
    epsilon: float | None = None  # Opacus, the ledger's accountant
    epsilon_rdp: float | None = None  # Opacus RDP
    epsilon_rdp_independent: float | None = None  # dp-accounting RDP
    epsilon_prv_independent: float | None = None  # dp-accounting PLD (PRV ledgers only)
    anchored: bool = False  # checked against a head recorded elsewhere (catches tail truncation)
    dataset: str | None = None  # the dataset fingerprint this ledger accounts for (None: not recorded)
    claimed_client: str | None = None  # the client an unverifiable header names (unverified)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def client_id(self) -> str | None:
        return self.header.client_id if self.header else None

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _claimed_client(path: Path) -> str | None:
    """The client id a ledger's header names, read without verifying it (to attribute a failure)."""
    try:
        with path.open("rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
        if magic == SQLITE_MAGIC:
            header_row, _ = read_rows(path)
            body = header_row[0] if header_row else None
        else:
            body = (json.loads(path.read_text(encoding="utf-8")).get("header") or {}).get("body")
        cid = json.loads(body).get("client_id") if isinstance(body, str) else None
    except (SecureFedError, OSError, ValueError, AttributeError, TypeError, RecursionError):
        return None
    return cid if isinstance(cid, str) else None


def _lenient_events(path: Path) -> tuple[LedgerHeader | None, tuple[DpEvent, ...]]:
    """Best-effort read of a ledger that failed verification, so a report can still show it (flagged)."""
    try:
        with path.open("rb") as f:
            if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                return None, ()
        header_row, rows = read_rows(path)
    except (SecureFedError, OSError):
        return None, ()
    header = None
    if header_row is not None:
        try:
            header = parse_header(*header_row)
        except SecureFedError:
            header = None
    events = []
    for row in rows:
        try:
            events.append(DpEvent.from_json(str(row[1]).encode("utf-8")))
        except SecureFedError:
            continue
    return header, tuple(events)


def verify_ledger(
    path: str | Path,
    *,
    expected_public_key: bytes | None = None,
    expected_head: LedgerHead | None = None,
    public_keys: Mapping[str, bytes] | None = None,
    heads: Mapping[str, LedgerHead] | None = None,
) -> LedgerVerification:
    """Run every check on one ledger file (SQLite or JSON export). Never raises for a bad ledger:
    failures are reported as checks. ``public_keys`` / ``heads`` map client ids to the pinned key /
    anchor and are used when ``expected_public_key`` / ``expected_head`` are not given."""
    path = Path(path)
    checks: list[Check] = []
    warnings: list[str] = []
    try:
        ledger: VerifiedLedger = load_ledger(path)
    except LedgerError as exc:
        header, events = _lenient_events(path)
        msg = str(exc).removeprefix(f"{path}: ")
        if isinstance(exc, LedgerHeaderTampered):
            checks.append(Check("header", False, f"header tampered: {msg}"))
        else:
            checks.append(Check("chain" if header is not None else "open", False, msg))
        return LedgerVerification(str(path), tuple(checks), (), header, events, False,
                                  claimed_client=_claimed_client(path))

    header = ledger.header
    if expected_public_key is None and public_keys:
        expected_public_key = public_keys.get(header.client_id)
    if expected_head is None and heads:
        expected_head = heads.get(header.client_id)
    checks.append(Check("header", True, f"header of client {header.client_id!r} is canonical and self-signed"))
    if expected_public_key is not None:
        if expected_public_key == header.public_key:
            checks.append(Check("public-key", True, "ledger is signed by the expected public key"))
        else:
            checks.append(Check("public-key", False, "ledger is signed by a different key than the expected one"))
    else:
        warnings.append("public key not pinned: pass --public-key CLIENT=HEX to bind the ledger to the client's "
                        "certified identity")
    checks.append(Check("chain", True, f"{len(ledger.entries)} entries: contiguous, linked, hashes and signatures valid"))
    if expected_head is not None:
        try:
            check_head(ledger.entries, expected_head)
            checks.append(Check("anchor", True, f"chain agrees with the anchored head at length {expected_head.length}"))
        except LedgerError as exc:
            checks.append(Check("anchor", False, str(exc)))
    else:
        warnings.append(NOT_ANCHORED)

    events = ledger.events
    budget = header.budget
    delta = budget.delta
    result: dict = {}
    try:
        mechs = merge((e.noise_multiplier, e.sample_rate, e.steps) for e in events)
        curve = rdp_curve(mechs)
        eps_rdp, order = rdp_to_epsilon_and_order(curve, delta)
        int_idx = [i for i, a in enumerate(DEFAULT_RDP_ORDERS) if float(a).is_integer()]
        int_orders = [DEFAULT_RDP_ORDERS[i] for i in int_idx]
        eps_int = rdp_to_epsilon(curve[int_idx], delta, int_orders)
        eps_int_ind = independent_rdp_epsilon(events, delta, int_orders)
        eps_rdp_ind = independent_rdp_epsilon(events, delta)
        result.update(epsilon_rdp=eps_rdp, epsilon_rdp_independent=eps_rdp_ind)
        ok = _close(eps_int, eps_int_ind, rel=RDP_INT_REL_TOL)
        # A check of the accounting code, not of the spend (the "budget" check has the authoritative
        # epsilon): for a PRV ledger the RDP bound is looser and may well exceed the budget.
        checks.append(Check(
            "rdp-crosscheck", ok,
            f"two RDP implementations {'agree' if ok else 'DISAGREE'} on these events (integer orders): Opacus "
            f"{eps_int:.10g}, dp-accounting {eps_int_ind:.10g} (relative tolerance {RDP_INT_REL_TOL:g}); a check of "
            "the accounting code, not of the spend: see the budget check",
        ))
        if math.isfinite(eps_rdp) and eps_rdp > 0:
            eps_direct = direct_epsilon_at_order(events, delta, order)
            ok = abs(eps_direct - eps_rdp) <= RDP_DIRECT_TOL * (1 + eps_rdp)
            checks.append(Check(
                "rdp-direct", ok,
                f"RDP epsilon at optimal order {order:g}: Opacus {eps_rdp:.10g}, direct integration "
                f"{eps_direct:.10g} ({'within' if ok else 'OUTSIDE'} {RDP_DIRECT_TOL:g} x (1 + epsilon))",
            ))
        if budget.accountant is AccountantName.PRV:
            eps = compute_epsilon(events, delta, AccountantName.PRV)
            eps_pld = independent_pld_epsilon(events, delta)
            result.update(epsilon_prv_independent=eps_pld)
            ok = _close(eps, eps_pld, rel=PRV_REL_TOL, abs_=PRV_ABS_TOL)
            checks.append(Check(
                "prv-crosscheck", ok,
                f"PRV epsilon: Opacus {eps:.6g}, dp-accounting PLD {eps_pld:.6g} "
                f"({'within' if ok else 'OUTSIDE'} tolerance {PRV_ABS_TOL:g} + {PRV_REL_TOL:g} relative)",
            ))
        else:
            eps = eps_rdp
        result["epsilon"] = eps
        within = eps <= budget.target_epsilon
        checks.append(Check(
            "budget", within,
            f"epsilon {eps:.6g} ({budget.accountant.value}, delta {delta:g}) "
            f"{'<=' if within else 'EXCEEDS'} target {budget.target_epsilon:g}",
        ))
        if budget.per_round_epsilon is not None:
            over = [
                (e.round_id, compute_epsilon([e], delta, budget.accountant))
                for e in events
            ]
            over = [(r, x) for r, x in over if x > budget.per_round_epsilon]
            checks.append(Check(
                "per-round-cap", not over,
                f"every round <= per_round_epsilon {budget.per_round_epsilon:g}" if not over else
                f"per_round_epsilon {budget.per_round_epsilon:g} exceeded by "
                + ", ".join(f"round {r} (epsilon {x:.4g})" for r, x in over),
            ))
    except (AccountingError, ValueError, RuntimeError) as exc:
        checks.append(Check("accounting", False, f"epsilon could not be recomputed: {exc}"))
    sized = [(e.round_id, e.context.dataset_size) for e in events if e.context is not None]
    if sized:
        bad = [(r, n) for r, n in sized if not delta < 1.0 / n]
        checks.append(Check(
            "delta-per-N", not bad,
            f"delta {delta:g} < 1/N for every round (N = {min(n for _, n in sized)}..{max(n for _, n in sized)} "
            "training examples)" if not bad else
            f"delta {delta:g} is not below 1/N in " + ", ".join(f"attempt {r} (N = {n})" for r, n in bad),
        ))

    insecure = [e.round_id for e in events if not e.secure_rng]
    if insecure:
        warnings.append(f"INSECURE RNG: rounds {insecure} drew DP noise without a secure RNG "
                        "(the guarantee assumes unpredictable noise)")
    return LedgerVerification(
        str(path), tuple(checks), tuple(warnings), header, events, True,
        **{k: result.get(k) for k in ("epsilon", "epsilon_rdp", "epsilon_rdp_independent", "epsilon_prv_independent")},
        anchored=expected_head is not None, dataset=ledger_dataset(header, ledger.entries),
    )


def verify_ledgers(
    paths: Sequence[str | Path],
    *,
    public_keys: Mapping[str, bytes] | None = None,
    heads: Mapping[str, LedgerHead] | None = None,
    required: Iterable[str] | None = None,
) -> list[LedgerVerification]:
    """Verify several ledgers; keys and anchors are looked up by the client id in each header.

    Two ledgers of the same client, dataset and identity key both fail ``unique-client`` (a client has
    one ledger per dataset and key), and a ``required`` client (default: every pinned one) without any
    ledger is an error (a ledger is missing); one whose ledger failed verification is not missing: that
    ledger's checks say why. Keys and heads of other clients (a round log names every member) only
    anchor the ledgers given: one member can audit its own."""
    public_keys = dict(public_keys or {})
    results = [verify_ledger(p, public_keys=public_keys, heads=heads) for p in paths]
    def owner(r: LedgerVerification) -> tuple:
        # One ledger per (client, dataset, identity key): a reissued key legitimately starts a second one.
        return (r.client_id, r.dataset, r.header.public_key if r.header else None)

    owners: dict[tuple, list[str]] = {}
    claimed: set[str] = set()
    for r in results:
        if r.client_id is not None:
            owners.setdefault(owner(r), []).append(r.source)
        claimed.add(r.client_id or r.claimed_client or "")
    out = []
    for r in results:
        others = [s for s in owners.get(owner(r), []) if s != r.source] if r.client_id is not None else []
        if others:
            r = replace(r, checks=(*r.checks, Check("unique-client", False,
                                                     f"client {r.client_id!r} also has ledger(s) {others}")))
        out.append(r)
    missing = sorted(set(public_keys if required is None else required) - claimed)
    if missing:
        raise LedgerError(f"no ledger given for pinned client(s) {missing}: pass their ledger files, or drop their "
                          "--public-key (--round-log alone anchors just the ledgers you give)")
    return out
