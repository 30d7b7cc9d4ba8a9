"""Secure-aggregation benchmark: prints ONE JSON array of records.

    python bench/secagg.py --json            # full grid: n in {10,50,100}, d in {1e5,1e6,4.2e6}, both graphs, dropout 0 / 0.1
    python bench/secagg.py --json --quick    # reduced grid (< 1 minute), includes the n=100, d=4.2M SecAgg+ target

Per (n, graph, dropout) the REAL protocol (SecAggServer + n SecAggClients, real X25519/Ed25519,
Shamir, AEAD) runs through every stage with a tiny vector (d=8), dropouts taken just before the
masked-input stage (so the server must rebuild their mask keys and remove their pairwise masks,
the expensive case). The server is stopped right before its final ``close_stage()`` with all
unmask shares received. For each d we then give that server a full-length running sum (the
masked inputs are uniform ring vectors, so random words cost the same) and time the real
``close_stage()``: Shamir reconstruction, key checks, expansion of every self mask and every
needed pairwise mask straight into the sum, and the float decode. The masked inputs' own
summation happens as they arrive (``receive``) and is reported apart as ``server_sum_s``.

Fields per record (``cores``: the cores this process may use; every ``*_1core_s`` figure is the
same work on one thread, every other time uses all ``cores``; ratios compare figures measured
interleaved in the same run, on the same number of cores, best of 3-5 because the machine is shared):
  keystream_s / keystream_1core_s   AES-256-CTR keystream alone (update_into a reused cache-sized
                  block) for the (degree + 1) masks of d words one client expands: the masking floor.
  keystream_rounding_s / ..._1core_s  the same plus the stochastic-rounding stream (4 bytes a value).
  client_encode_mask_s / ..._1core_s  ``crypto.fixedpoint.encode_masked``: the client's real encode
                  (clip, stochastic rounding from the CSPRNG) and every mask, in one pass.
  client_encode_mask_over_keystream (and ``_1core``): client_encode_mask_s / keystream_s; the issue's
                  target is <= 1.5. ``..._over_keystream_rounding`` divides by keystream_rounding_s.
  keystream_1core_cpu_s, client_encode_mask_1core_cpu_s, client_encode_mask_over_keystream_1core_cpu:
                  the one-core figures as the thread's CPU time (``time.thread_time``), which other
                  processes on a shared machine do not inflate.
  client_mask_s   ``secagg.client.apply_masks`` alone on an encoded vector (all cores).
  client_encode_s ``crypto.fixedpoint.encode`` alone (all cores).
  client_key_agreement_s  ``secagg.client.mask_keys``: X25519 + HKDF with every neighbour (+ self-mask key).
  server_unmask_s / server_unmask_1core_s  the real final ``close_stage()`` on full d, as described above.
  server_keystream_s / server_keystream_1core_s  keystream alone for exactly the masks that
                  close_stage() expands (``server_masks_expanded`` streams of d words).
  server_unmask_over_keystream (and ``_1core``): the issue's target is <= 1.3.
  server_sum_s    adding the survivors' masked vectors mod 2^bits (what ``receive`` does per message).
  upload_bytes    one client's bytes sent over the whole round (field payloads, no transport framing).
  plaintext_bytes 4 * d (the float32 update sent in the clear).
Timings are wall-clock seconds on this machine.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

from securefed.crypto import shamir  # noqa: E402
from securefed.crypto.fixedpoint import encode, encode_masked  # noqa: E402
from securefed.crypto.keys import AgreementKeyPair  # noqa: E402
from securefed.crypto.prg import BLOCK_BYTES, default_workers, ring_dtype, run_ranges  # noqa: E402
from securefed.secagg import SecAggParams, SimulatedRound, Stage, suggest_params  # noqa: E402
from securefed.secagg.client import apply_masks, mask_keys  # noqa: E402

SMALL_D = 8
CHUNK = BLOCK_BYTES  # the block size the real code uses


def _best(fn, repeats: int, clock=time.perf_counter) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def params_for(n: int, graph: str) -> SecAggParams:
    return suggest_params(n, sparse=(graph == "secagg+"), ring_bits=32, frac_bits=16, clip=1.0)


def prepared_server(n: int, params: SecAggParams, dropout: float):
    """Run the real protocol on SMALL_D up to the last close_stage(); return (round, dropped ids)."""
    rng = np.random.default_rng(n)  # not secret: benchmark inputs
    inputs = {cid: rng.uniform(-1, 1, SMALL_D) for cid in range(1, n + 1)}
    dropped = list(range(n, n - int(round(dropout * n)), -1))
    rnd = SimulatedRound(inputs, params)
    drop = {c: Stage.MASKED_INPUT for c in dropped}
    for _ in range(4):
        rnd.step(drop=drop)
    for cid, msg in sorted(rnd.outbox.items()):
        rnd.server.receive(rnd.clients[cid].handle(msg))
    return rnd, dropped


def time_unmask(rnd: SimulatedRound, d: int, ring_bits: int, workers: int) -> tuple[float, int]:
    server = copy.deepcopy(rnd.server)  # keeps the prepared one for the next d
    # The running sum of the masked inputs at full length (uniform ring words, like real ones).
    server._sum = np.frombuffer(os.urandom(d * ring_dtype(ring_bits).itemsize), dtype=ring_dtype(ring_bits)).copy()
    server._d = d
    saved = os.environ.get("SECUREFED_MASK_WORKERS")
    os.environ["SECUREFED_MASK_WORKERS"] = str(workers)
    shamir._lagrange_weights.cache_clear()  # a cold start, as for a server's first round
    try:
        t0 = time.perf_counter()
        server.close_stage()
        elapsed = time.perf_counter() - t0
    finally:
        if saved is None:
            os.environ.pop("SECUREFED_MASK_WORKERS", None)
        else:
            os.environ["SECUREFED_MASK_WORKERS"] = saved
    g = server.graph
    u3 = set(server.result.survivors)
    masks = len(u3) + sum(len(g.of(u) & u3) for u in set(server.dropouts))
    return elapsed, masks


def time_keystream(masks: int, d: int, itemsize: int, workers: int, extra_bytes_per_word: int = 0):
    """AES-256-CTR keystream for ``masks`` streams of d words (plus, optionally, one stream of
    ``extra_bytes_per_word`` bytes a word: the rounding randomness), written into one cache-resident
    block per thread, the vector split into ``workers`` ranges as the real code splits it: the
    cheapest way to produce that keystream, no accumulator, no allocation."""
    keys = [os.urandom(32) for _ in range(masks)]
    extra = os.urandom(32)
    zeros = memoryview(bytes(CHUNK))

    def streams(start: int, stop: int) -> None:
        block = memoryview(bytearray(CHUNK))
        todo = [(k, itemsize) for k in keys] + ([(extra, extra_bytes_per_word)] if extra_bytes_per_word else [])
        for k, width in todo:
            enc = Cipher(algorithms.AES(k), modes.CTR((start * width // 16).to_bytes(16, "big"))).encryptor()
            nbytes = (stop - start) * width
            for s in range(0, nbytes, CHUNK):
                c = min(CHUNK, nbytes - s)
                enc.update_into(zeros[:c], block[:c])

    return lambda: run_ranges(d, CHUNK // itemsize, workers, streams)


def upload_bytes(n_holders: int, d: int, itemsize: int, deg: int, n: int) -> int:
    """One client's payload bytes over the round (ids 8 B, session ids 32 B, stage 1 B per message)."""
    head = 32 + 1 + 8
    advertise = head + 32 + 32 + 64 + 32 + (n - 1) * 32  # c_pk, s_pk, signature, inbox root, inbox keys
    share_ct = 8 + 8 + 12 + 2 * 74 + 16  # sender, receiver, nonce, two Shamir shares, tag
    share_keys = head + deg * share_ct + 64  # one signature over the root of the sender's share tree
    masked = head + d * itemsize
    consistency = head + 64
    unmask = head + n_holders * (8 + 74)  # one share per neighbour still in the round, plus its own
    return advertise + share_keys + masked + consistency + unmask


def run(quick: bool = False) -> list[dict]:
    if quick:
        grid_n, grid_d = (10, 100), (100_000,)
        extra = [(100, 4_200_000, "secagg+", 0.1)]
    else:
        grid_n, grid_d = (10, 50, 100), (100_000, 1_000_000, 4_200_000)
        extra = []
    combos = [(n, g, p) for n in grid_n for g in ("complete", "secagg+") for p in (0.0, 0.1)]
    wanted = {(n, d, g, p) for (n, g, p) in combos for d in grid_d} | set(extra)
    records = []
    cores = default_workers()
    for n, g, p in sorted({(n, g, p) for (n, _, g, p) in wanted}):
        params = params_for(n, g)
        rnd, dropped = prepared_server(n, params, p)
        deg = params.effective_degree(n)
        bits = params.ring_bits
        itemsize = ring_dtype(bits).itemsize
        # The client with the median id stands for "one client"; its real keys are agreed already.
        me = n // 2
        s_key = AgreementKeyPair.generate()
        peers = {v: AgreementKeyPair.generate().public_bytes() for v in sorted(rnd.server.graph.of(me))}
        sid = rnd.server.session_id
        agree = lambda: mask_keys(session_id=sid, client_id=me, self_mask_seed=seed,  # noqa: E731
                                  mask_private_key=s_key.private_bytes(), neighbour_mask_keys=peers)
        seed = os.urandom(32)
        key_agreement_s = _best(agree, 3)
        keys = agree()
        for d in sorted(d for (nn, d, gg, pp) in wanted if (nn, gg, pp) == (n, g, p)):
            repeats = 5 if d <= 1_000_000 else 3
            fp = params.fixed_point()
            x = np.random.default_rng(d).uniform(-1, 1, d)  # not secret: benchmark data (float64, as the daemon passes it)
            encoded, _ = encode(x, fp)
            acc = np.ascontiguousarray(encoded)
            t = {k: math.inf for k in ("ks", "ks1", "ksr", "ksr1", "em", "em1", "m", "e")}
            runs = {
                "ks": time_keystream(deg + 1, d, itemsize, cores), "ks1": time_keystream(deg + 1, d, itemsize, 1),
                "ksr": time_keystream(deg + 1, d, itemsize, cores, 4),
                "ksr1": time_keystream(deg + 1, d, itemsize, 1, 4),
                "em": lambda: encode_masked(x, fp, keys, workers=cores),
                "em1": lambda: encode_masked(x, fp, keys, workers=1),
                "m": lambda: apply_masks(acc, keys, workers=cores), "e": lambda: encode(x, fp),
            }
            # Interleaved, best of each: the machine is shared, so load drifts between runs.
            for _ in range(repeats):
                for k, fn in runs.items():
                    t[k] = min(t[k], _best(fn, 1))
            # The one-core figures again as this thread's CPU time: what the work costs, whatever else
            # the shared machine runs meanwhile (wall-clock ratios drift by +-0.3 under load).
            cpu = {k: min(_best(runs[k], 1, clock=time.thread_time) for _ in range(repeats)) for k in ("ks1", "em1")}
            _, masks = time_unmask(rnd, min(d, 4096), bits, cores)  # how many masks close_stage() expands
            sks, sks1 = time_keystream(masks, d, itemsize, cores), time_keystream(masks, d, itemsize, 1)
            unmask_s = unmask1_s = server_ks_s = server_ks1_s = math.inf
            for _ in range(3 if d > 1_000_000 else repeats):  # interleaved, best of each
                unmask_s = min(unmask_s, time_unmask(rnd, d, bits, cores)[0])
                server_ks_s = min(server_ks_s, _best(sks, 1))
                unmask1_s = min(unmask1_s, time_unmask(rnd, d, bits, 1)[0])
                server_ks1_s = min(server_ks1_s, _best(sks1, 1))
            survivors = n - len(dropped)
            vecs = [np.frombuffer(os.urandom(d * itemsize), dtype=ring_dtype(bits)) for _ in range(2)]
            total = np.zeros(d, dtype=ring_dtype(bits))
            t0 = time.perf_counter()
            for i in range(survivors):
                np.add(total, vecs[i % 2], out=total)
            server_sum_s = time.perf_counter() - t0
            up = upload_bytes(deg + 1, d, itemsize, deg, n)
            records.append({
                "name": "secagg", "n": n, "d": d, "graph": g, "dropout": p, "cores": cores,
                "threshold": params.threshold, "degree": deg, "ring_bits": bits,
                "survivors": survivors, "dropped": len(dropped),
                "keystream_s": round(t["ks"], 5), "keystream_1core_s": round(t["ks1"], 5),
                "keystream_rounding_s": round(t["ksr"], 5), "keystream_rounding_1core_s": round(t["ksr1"], 5),
                "client_encode_mask_s": round(t["em"], 5), "client_encode_mask_1core_s": round(t["em1"], 5),
                "client_encode_mask_over_keystream": round(t["em"] / t["ks"], 3),
                "client_encode_mask_over_keystream_1core": round(t["em1"] / t["ks1"], 3),
                "client_encode_mask_over_keystream_rounding": round(t["em"] / t["ksr"], 3),
                "client_encode_mask_over_keystream_rounding_1core": round(t["em1"] / t["ksr1"], 3),
                "keystream_1core_cpu_s": round(cpu["ks1"], 5), "client_encode_mask_1core_cpu_s": round(cpu["em1"], 5),
                "client_encode_mask_over_keystream_1core_cpu": round(cpu["em1"] / cpu["ks1"], 3),
                "client_mask_s": round(t["m"], 5), "client_encode_s": round(t["e"], 5),
                "client_key_agreement_s": round(key_agreement_s, 5),
                "server_unmask_s": round(unmask_s, 5), "server_unmask_1core_s": round(unmask1_s, 5),
                "server_keystream_s": round(server_ks_s, 5), "server_keystream_1core_s": round(server_ks1_s, 5),
                "server_unmask_over_keystream": round(unmask_s / server_ks_s, 3),
                "server_unmask_over_keystream_1core": round(unmask1_s / server_ks1_s, 3),
                "server_masks_expanded": masks,
                "server_sum_s": round(server_sum_s, 5),
                "upload_bytes": up, "plaintext_bytes": 4 * d, "upload_over_plaintext": round(up / (4 * d), 4),
                "method": "real protocol at d=8 to the last stage; real close_stage() timed on full d",
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            })
            r = records[-1]
            print(f"# {n} {d} {g} {p}: encode+mask {r['client_encode_mask_over_keystream']}x "
                  f"(1 core {r['client_encode_mask_over_keystream_1core']}x, CPU time "
                  f"{r['client_encode_mask_over_keystream_1core_cpu']}x) keystream {t['ks']:.3f}s; "
                  f"unmask {unmask_s:.3f}s = {r['server_unmask_over_keystream']}x keystream "
                  f"(1 core {unmask1_s:.3f}s = {r['server_unmask_over_keystream_1core']}x)", file=sys.stderr)
    records.extend(_ckks_records(quick))
    return records


def _ckks_records(quick: bool) -> list[dict]:
    path = Path(__file__).with_name("ckks.py")
    if not path.exists():
        return []
    spec = importlib.util.spec_from_file_location("securefed_bench_ckks", path)
    if spec is None or spec.loader is None:
        return []
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return list(module.run(quick))
    except Exception as exc:  # another helper's bench must not sink ours; say so in the output
        return [{"name": "ckks", "error": f"{type(exc).__name__}: {exc}"}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON array (the only output on stdout)")
    ap.add_argument("--quick", action="store_true", help="reduced grid, under a minute")
    args = ap.parse_args(argv)
    records = run(quick=args.quick)
    if args.json:
        print(json.dumps(records))
    else:
        for r in records:
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
