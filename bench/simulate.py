"""``securefed simulate`` as a user runs it: 100 tiny members x 2 rounds, on the local engine and on a
2-worker local Ray, timed as whole processes (start-up, model, data split, Ray start included).

Prints one JSON array: one record per engine with ``engine``, ``members``, ``rounds``, ``seconds`` (wall
clock of the whole command), ``under_2_minutes``, the final round's ``heldout_loss``, ``heldout_ppl``,
``epsilon_spent_max`` and ``aggregate_sha256``, and ``same_final_round_as_local`` (the Ray run's final
round equals the local one's: both use ``--reproducible``, so noise, batches and rounding come from the
seed). The tiny preset is built once into a temporary directory (not timed).

    python bench/simulate.py --json [--members 100] [--rounds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FINAL = ("heldout_loss", "heldout_ppl", "epsilon_spent_max", "aggregate_sha256", "summed")


def run(model: Path, engine: str, members: int, rounds: int, workers: int) -> dict:
    cmd = [sys.executable, "-m", "securefed.cli", "simulate", "--members", str(members), "--rounds", str(rounds),
           "--epsilon", "3", "--model", str(model), "--reproducible", "--dropout-rate", "0.1", "--engine", engine,
           "--json"]
    if engine == "ray":
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{engine}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    last = json.loads(proc.stdout)[-1]
    return {"name": "simulate", "engine": engine, "members": members, "rounds": rounds,
            "workers": workers if engine == "ray" else 1, "seconds": round(seconds, 1),
            "under_2_minutes": seconds < 120, **{k: last[k] for k in FINAL},
            "train_seconds_last_round": last["train_seconds"], "aggregate_seconds_last_round": last["aggregate_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON array on stdout (the only output)")
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from securefed.training.preset import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="securefed-simulate-") as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        records = [run(model, engine, args.members, args.rounds, args.workers) for engine in ("local", "ray")]
    local = records[0]
    for r in records:
        r["same_final_round_as_local"] = all(r[k] == local[k] for k in FINAL)
        print(f"# {r['engine']}: {r['seconds']} s, final held-out loss {r['heldout_loss']}, "
              f"same as local: {r['same_final_round_as_local']}", file=sys.stderr)
    print(json.dumps(records, indent=None if args.json else 1))
    return 0 if all(r["under_2_minutes"] and r["same_final_round_as_local"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
