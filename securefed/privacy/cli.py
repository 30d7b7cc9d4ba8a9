"""``securefed privacy``: epsilon of a DP-SGD run, and noise calibration for a planned federation.

    securefed privacy epsilon --noise-multiplier 1.5 --sample-rate 0.04 --steps 2250 --delta 1e-5
    securefed privacy plan --dataset-size 10000 --batch-size 64 --epochs-per-round 1 --rounds 10 \\
        --clip 1.0 --target-epsilon 8 --delta 1e-5
    securefed privacy status state/ledger.sqlite
    securefed privacy export state/ledger.sqlite --out ledger.json

``epsilon`` prints a short description and, as its last line, the number alone (for scripts);
``--json`` prints one JSON object instead. Unbounded epsilon (no noise) is ``inf`` / JSON ``null``.
"""

from __future__ import annotations

import argparse
import json
import math

from securefed.errors import AccountingError, ConfigError, InvalidInput

# The handlers import the accounting modules themselves: those load numpy and pydantic, which
# registering the subcommands (and so every `securefed --help`) must not pay for.

ACCOUNTANT_CHOICES = ("rdp", "prv")


def register(subparsers) -> None:
    p = subparsers.add_parser("privacy", help="privacy accounting: epsilon of a run, noise calibration for a plan",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    e = sub.add_parser("epsilon", help="epsilon of Poisson-subsampled DP-SGD with given sigma, q, steps, delta")
    e.add_argument("--noise-multiplier", type=float, required=True, metavar="SIGMA",
                   help="noise std / clip norm (>= 0)")
    e.add_argument("--sample-rate", type=float, required=True, metavar="Q", help="Poisson sampling rate in [0, 1]")
    e.add_argument("--steps", type=int, required=True, metavar="T", help="number of noisy steps (>= 0)")
    e.add_argument("--delta", type=float, required=True, metavar="D", help="delta in (0, 1)")
    e.add_argument("--accountant", choices=ACCOUNTANT_CHOICES, default="rdp", help="accountant (default rdp)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(handler=_epsilon)

    pl = sub.add_parser("plan", help="calibrate the noise multiplier so a whole planned run fits a budget")
    pl.add_argument("--dataset-size", type=int, required=True, metavar="N", help="training examples at this client")
    pl.add_argument("--batch-size", type=int, required=True, metavar="B", help="expected Poisson batch size")
    pl.add_argument("--epochs-per-round", type=float, required=True, metavar="E", help="local epochs per round")
    pl.add_argument("--rounds", type=int, required=True, metavar="R", help="rounds this client may join")
    pl.add_argument("--clip", type=float, required=True, metavar="C", help="per-sample clip norm (noise std = sigma C)")
    pl.add_argument("--target-epsilon", type=float, required=True, metavar="EPS", help="total epsilon budget")
    pl.add_argument("--delta", type=float, required=True, metavar="D", help="delta (must be < 1/N)")
    pl.add_argument("--accountant", choices=ACCOUNTANT_CHOICES, default="rdp", help="accountant (default rdp)")
    pl.add_argument("--ledger", metavar="PATH", help="include the epsilon already spent in this client ledger")
    pl.add_argument("--json", action="store_true", help="print one JSON object")
    pl.set_defaults(handler=_plan)

    st = sub.add_parser("status", help="verify a client ledger and print the epsilon spent and left")
    st.add_argument("ledger", metavar="LEDGER", help="client ledger (SQLite or JSON export)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(handler=_status)

    ex = sub.add_parser("export", help="verify a client ledger and write it as portable JSON")
    ex.add_argument("ledger", metavar="LEDGER", help="client ledger (SQLite)")
    ex.add_argument("--out", required=True, metavar="FILE", help="output JSON file (written atomically)")
    ex.set_defaults(handler=_export)


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _epsilon(args: argparse.Namespace) -> int:
    from securefed.privacy import accountants, formulas

    if args.steps < 0:
        raise InvalidInput(f"--steps must be >= 0, got {args.steps}")
    if not (0 < args.delta < 1):
        raise InvalidInput(f"--delta must be in (0, 1), got {args.delta:g}")
    try:
        mech = formulas.SubsampledGaussian(args.noise_multiplier, args.sample_rate, args.steps)
        eps = accountants.accountant_class(args.accountant).epsilon_of_mechanisms([mech], args.delta)
    except AccountingError as exc:
        raise InvalidInput(str(exc)) from None
    if args.json:
        print(json.dumps({
            "epsilon": _json_num(eps),
            "unbounded": math.isinf(eps),
            "accountant": args.accountant,
            "noise_multiplier": args.noise_multiplier,
            "sample_rate": args.sample_rate,
            "steps": args.steps,
            "delta": args.delta,
        }))
    else:
        print(f"accountant {args.accountant}: sigma={args.noise_multiplier:g} q={args.sample_rate:g} "
              f"steps={args.steps} delta={args.delta:g}")
        print("epsilon:")
        print(repr(eps) if math.isfinite(eps) else "inf")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from securefed.privacy import accountants, budget, formulas, independent, ledger

    if args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    if not (math.isfinite(args.clip) and args.clip > 0):
        raise ConfigError(f"--clip must be > 0, got {args.clip:g}")
    if not (0 < args.delta < 1):
        raise ConfigError(f"--delta must be in (0, 1), got {args.delta:g}")
    budget.check_delta_for_dataset(args.delta, args.dataset_size)
    sched = budget.plan_schedule(args.dataset_size, args.batch_size, args.epochs_per_round)
    prior = ()
    if args.ledger:
        prior = ledger.load_ledger(args.ledger).events
    total_steps = sched.steps_per_round * args.rounds
    # The member's calibration: within the target by its accountant and by the auditor's (dp-accounting).
    sigma = budget.calibrate_noise(args.target_epsilon, args.delta, sched.sample_rate, total_steps,
                                   args.accountant, prior_events=prior,
                                   second_opinion=independent.second_opinion(args.accountant))
    cls = accountants.accountant_class(args.accountant)
    prior_mechs = [accountants.mechanism_of(e) for e in prior]
    spent = cls.epsilon_of_mechanisms(prior_mechs, args.delta) if prior_mechs else 0.0
    rows = []
    for r in range(1, args.rounds + 1):
        eps = cls.epsilon_of_mechanisms(
            [*prior_mechs, formulas.SubsampledGaussian(sigma, sched.sample_rate, sched.steps_per_round * r)], args.delta
        )
        rows.append({"round": r, "steps": sched.steps_per_round * r, "epsilon": eps,
                     "remaining": args.target_epsilon - eps})
    if args.json:
        print(json.dumps({
            "noise_multiplier": sigma,
            "noise_std": sigma * args.clip,
            "sample_rate": sched.sample_rate,
            "steps_per_round": sched.steps_per_round,
            "rounds": args.rounds,
            "clip_norm": args.clip,
            "delta": args.delta,
            "accountant": args.accountant,
            "target_epsilon": args.target_epsilon,
            "prior_epsilon": spent,
            "epsilon_total": rows[-1]["epsilon"],
            "per_round": rows,
        }))
        return 0
    print(f"sample rate q = {args.batch_size}/{args.dataset_size} = {sched.sample_rate:.6g}; "
          f"{sched.steps_per_round} steps per round x {args.rounds} rounds = {total_steps} steps")
    if prior:
        print(f"already spent (ledger {args.ledger}): epsilon {spent:.4f}")
    print(f"calibrated noise multiplier: {sigma:.6g} (noise std {sigma * args.clip:.6g} at clip {args.clip:g}); "
          f"accountant {args.accountant}, delta {args.delta:g}, target epsilon {args.target_epsilon:g}")
    print(f"{'round':>5}  {'steps':>8}  {'epsilon':>10}  {'remaining':>10}")
    for row in rows:
        print(f"{row['round']:>5}  {row['steps']:>8}  {row['epsilon']:>10.4f}  {row['remaining']:>10.4f}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from securefed.privacy import accountants, ledger

    led = ledger.load_ledger(args.ledger)  # LedgerError (one line) if anything does not verify
    b = led.header.budget
    eps = accountants.compute_epsilon(led.events, b.delta, b.accountant)
    insecure = [e.round_id for e in led.events if not e.secure_rng]
    if args.json:
        print(json.dumps({
            "client_id": led.header.client_id,
            "public_key": led.header.public_key.hex(),
            "budget": b.to_dict(),
            "entries": len(led.entries),
            "epsilon": _json_num(eps),
            "remaining": _json_num(b.target_epsilon - eps),
            "insecure_rng_rounds": insecure,
            "head": {"length": len(led.entries),
                     "entry_hash": led.entries[-1].entry_hash if led.entries else led.header.header_hash},
        }))
        return 0
    print(f"client {led.header.client_id}: {len(led.entries)} ledger entries, chain and signatures verified")
    print(f"budget: epsilon {b.target_epsilon:g}, delta {b.delta:g}, accountant {b.accountant.value}"
          + (f", per-round cap {b.per_round_epsilon:g}" if b.per_round_epsilon else ""))
    print(f"spent: epsilon {eps:.6g}; remaining {b.target_epsilon - eps:.6g}")
    if insecure:
        print(f"WARNING: rounds {insecure} drew DP noise without a secure RNG")
    return 0


def _export(args: argparse.Namespace) -> int:
    from securefed.privacy import ledger

    with ledger.Ledger.open(args.ledger) as led:
        led.export_json(args.out)
        n = len(led.entries())
    print(f"exported {n} verified entries of client {led.client_id} to {args.out}")
    return 0
