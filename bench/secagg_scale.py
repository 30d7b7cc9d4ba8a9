"""Secure aggregation with hundreds of members in one round: the server's time and memory per round.

For each n (default 100, 300, 1000) one round of the real protocol runs with d-parameter updates
(default d = 1,000,000, about the 1M-parameter adapter of ``bench/round.py``): n ``SecAggClient`` state
machines in this process (real X25519/Ed25519 keys, Shamir shares, AEAD, encode + masks) and ONE
``SecAggServer`` alone in a child process, fed the clients' messages stage by stage over a local pipe, so
that the child's resident memory is the server's. Parameters are the coordinator's for a cohort of n
(``simulation.aggregation.secagg_params``: SecAgg+ degree 3 log2 n, the smallest threshold safe against
one colluder, 24 fractional bits and the smallest ring a sum of n cannot overflow: 32 bits up to 127
members, 64 above). 10% of the members drop before sending their masked input, the expensive case for
the server (it must rebuild their mask keys and remove their pairwise masks).

Fields per record: ``n``, ``d``, ``degree``, ``threshold``, ``ring_bits``, ``dropped``, ``survivors``,
``server_cpu_s`` / ``server_wall_s`` (the server's own calls over the whole round: CPU time of the server
process and wall time inside its calls), ``server_stage_cpu_s`` (per stage: keys, shares, masked inputs
as they arrive, consistency, unmasking), ``server_peak_rss_mb`` (peak resident set of the server process,
from getrusage), ``server_baseline_rss_mb`` (the same process before the round: interpreter and numpy),
``sum_mb`` (the running sum it must hold: d x ring bytes), ``masks_expanded`` (streams of d words the
final unmasking expands), ``clients_wall_s`` (every client's work in this process, one after another:
what n machines would do in parallel), ``round_wall_s``, ``exact`` (the unmasked sum equals the
survivors' encoded inputs, bit for bit).

    nice -n 10 python bench/secagg_scale.py --json [--members 100 300 1000] [--d 1000000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from securefed.crypto.fixedpoint import encode_masked  # noqa: E402
from securefed.secagg import SecAggClient, SecAggServer, Stage, make_identities  # noqa: E402
from securefed.simulation.aggregation import secagg_params  # noqa: E402

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def serve(conn, params, d: int, cohort: dict[int, bytes]) -> None:
    """The child: one SecAggServer, driven by the parent's messages; reports its own time and memory."""
    baseline = _rss_mb()
    cpu: dict[str, float] = {}
    wall = 0.0

    def timed(stage: Stage, fn, *args):
        nonlocal wall
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn(*args)
        cpu[stage.name] = cpu.get(stage.name, 0.0) + time.process_time() - c0
        wall += time.perf_counter() - w0
        return out

    server = timed(Stage.ADVERTISE_KEYS, lambda: SecAggServer(params, round_id=1, vector_length=d, cohort=cohort,
                                                              max_colluders=1))
    conn.send(timed(Stage.ADVERTISE_KEYS, server.start))
    for stage in STAGES:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            for reply in msg:
                timed(stage, server.receive, reply)
            del msg
        conn.send(timed(stage, server.close_stage))
    result = server.result
    g = server.graph
    u3 = set(result.survivors)
    masks = len(u3) + sum(len(g.of(u) & u3) for u in set(server.dropouts))
    conn.send({"cpu": cpu, "wall": wall, "baseline": baseline,
               "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               "ring_sum": result.ring_sum, "survivors": result.survivors, "masks": masks})


def run(n: int, d: int, dropout: float, seed: int) -> dict:
    params = secagg_params(n, 1.0, 1)
    ids = make_identities(range(1, n + 1))
    # Known rounding keys, so the exact ring sum can be recomputed here (masks and keys stay fresh).
    rounding = {cid: os.urandom(32) for cid in ids}
    clients = {cid: SecAggClient(cid, ids[cid], max_colluders=1, rounding_key=rounding[cid]) for cid in ids}
    rng = np.random.default_rng(seed)  # not secret: benchmark inputs and who drops
    dropped = set(int(c) for c in rng.choice(list(ids), size=int(round(dropout * n)), replace=False))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(child, params, d, {c: k.public_bytes() for c, k in ids.items()}))
    t_round = time.perf_counter()
    proc.start()
    outbox = parent.recv()
    clients_s = 0.0
    encoded_sum = np.zeros(d, dtype=np.uint64 if params.ring_bits == 64 else np.uint32)
    for stage in STAGES:
        batch = []
        for cid, msg in sorted(outbox.items()):
            if stage is Stage.MASKED_INPUT and cid in dropped:
                continue
            if stage is Stage.MASKED_INPUT:
                x = np.random.default_rng([seed, cid]).uniform(-1, 1, d)  # not secret: this member's update
                clients[cid].set_input(x)
                encoded_sum += encode_masked(x, params.fixed_point(), rounding_key=rounding[cid])[0]  # reference
            t0 = time.perf_counter()
            reply = clients[cid].handle(msg)
            clients_s += time.perf_counter() - t0
            if stage is Stage.MASKED_INPUT:
                parent.send([reply])  # one vector at a time: the server sums it on arrival
            else:
                batch.append(reply)
            del reply
        if batch:
            parent.send(batch)
        parent.send(None)
        outbox = parent.recv()
    report = parent.recv()
    proc.join()
    round_s = time.perf_counter() - t_round
    survivors = report["survivors"]
    exact = bool(np.array_equal(report["ring_sum"], encoded_sum)) and set(survivors) == set(ids) - dropped
    return {
        "name": "secagg_scale", "n": n, "d": d, "degree": params.effective_degree(n), "threshold": params.threshold,
        "ring_bits": params.ring_bits, "dropped": len(dropped), "survivors": len(survivors),
        "server_cpu_s": round(sum(report["cpu"].values()), 3), "server_wall_s": round(report["wall"], 3),
        "server_stage_cpu_s": {k: round(v, 3) for k, v in report["cpu"].items()},
        "server_peak_rss_mb": round(report["peak"], 1), "server_baseline_rss_mb": round(report["baseline"], 1),
        "sum_mb": round(d * params.ring_bits / 8 / 2**20, 1), "masks_expanded": report["masks"],
        "clients_wall_s": round(clients_s, 1), "round_wall_s": round(round_s, 1), "exact": exact,
        "cores": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON array on stdout")
    ap.add_argument("--members", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--d", type=int, default=1_000_000, help="parameters per update (default 1e6)")
    ap.add_argument("--dropout", type=float, default=0.1)
    args = ap.parse_args(argv)
    records = []
    for n in args.members:
        records.append(run(n, args.d, args.dropout, seed=n))
        r = records[-1]
        print(f"# n={n}: server {r['server_cpu_s']} s CPU, peak RSS {r['server_peak_rss_mb']} MB "
              f"(baseline {r['server_baseline_rss_mb']}), clients {r['clients_wall_s']} s, exact {r['exact']}",
              file=sys.stderr, flush=True)
    print(json.dumps(records, indent=None if args.json else 1))
    return 0 if all(r["exact"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
