"""CKKS aggregation benchmark: time, bytes on the wire and error for vectors of d parameters.

``run(quick)`` returns one record per (parameter set, d); ``python bench/ckks.py [--quick]`` prints
them as one JSON array. Times are wall-clock on this machine (single-threaded SEAL); ``*_per_mparam``
fields divide by d / 1e6. ``add_s`` is the server's cost to check and add one more client's vector
(c0 modulo q, no SEAL); ``tag_s`` a contributor's linear tag; ``tag_check_s`` a decryptor's check of
the sum; ``decrypt_s`` includes regenerating c1 of the sum from every contributor's seeds.
``bytes_per_param`` is one upload, ``download_bytes_per_param`` the sum a decryptor downloads.
``encrypt_parallel_s`` / ``decrypt_parallel_s``: the same work by ``he.ParallelClientContext`` on
``workers`` processes (None below its minimum size), and the ``*_speedup`` over one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securefed import he  # noqa: E402

N_CLIENTS = 3


def _one(params_name: str, d: int, n_clients: int = N_CLIENTS) -> dict:
    params = he.get_params(params_name)
    client = he.generate_client_context(params)
    server_ctx = he.ServerContext.from_public_bytes(client.public_bytes(), params)
    data_rng = np.random.default_rng(d)  # not secret: benchmark data
    xs = [data_rng.uniform(-1.0, 1.0, d) for _ in range(n_clients)]
    keys = client.attempt_keys(bytes(32), 1)

    t0 = time.perf_counter()
    encs = [client.encrypt(x) for x in xs]
    encrypt_s = (time.perf_counter() - t0) / n_clients
    t0 = time.perf_counter()
    contributor_tags = [client.contribution_tag(e, keys) for e in encs]
    tag_s = (time.perf_counter() - t0) / n_clients

    agg = he.ServerAggregator(server_ctx, d)
    t0 = time.perf_counter()
    for i, e in enumerate(encs):
        agg.add(e, sender=f"m{i}")
    add_s = (time.perf_counter() - t0) / n_clients
    t0 = time.perf_counter()
    result = agg.result()
    serialize_sum_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ok = client.sum_matches(result, contributor_tags, keys)
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = client.decrypt(result, noise_key=keys.flood)
    decrypt_s = time.perf_counter() - t0
    expected = np.sum(xs, axis=0)
    raw = client._decode_checked(result, None)  # the CKKS error alone, never released
    # The same member work on every core (he.parallel: SEAL holds the GIL, so processes, not threads).
    par = he.ParallelClientContext(client._ctx, params)
    par_enc_s = par_dec_s = None
    if par._ranges(params.chunks_for(d)) is not None:
        par.encrypt(xs[0])  # starts the worker processes (once per member), not timed
        t0 = time.perf_counter()
        for x in xs:
            par.encrypt(x)
        par_enc_s = (time.perf_counter() - t0) / n_clients
        t0 = time.perf_counter()
        par.decrypt(result, noise_key=keys.flood)
        par_dec_s = time.perf_counter() - t0
    par.close()

    per_m = 1e6 / d
    return {
        "name": "ckks",
        "params": params_name,
        "d": d,
        "clients": n_clients,
        "encrypt_s": encrypt_s,
        "tag_s": tag_s,
        "add_s": add_s,
        "serialize_sum_s": serialize_sum_s,
        "tag_check_s": check_s,
        "tag_check_ok": ok,
        "decrypt_s": decrypt_s,
        "encrypt_s_per_mparam": encrypt_s * per_m,
        "add_s_per_mparam": add_s * per_m,
        "decrypt_s_per_mparam": decrypt_s * per_m,
        "bytes_per_param": encs[0].nbytes / d,
        "download_bytes_per_param": result.nbytes / d,
        "max_abs_error": float(np.max(np.abs(total - expected))),
        "ckks_error_before_flooding": float(np.max(np.abs(raw - expected))),
        "flood_sigma": params.flood_sigma,
        "workers": par.workers,
        "encrypt_parallel_s": par_enc_s,
        "decrypt_parallel_s": par_dec_s,
        "encrypt_speedup": round(encrypt_s / par_enc_s, 2) if par_enc_s else None,
        "decrypt_speedup": round(decrypt_s / par_dec_s, 2) if par_dec_s else None,
    }


def run(quick: bool) -> list[dict]:
    sizes = [100_000] if quick else [100_000, 1_000_000]
    names = [he.DEFAULT_PARAMS_NAME] if quick else sorted(he.PARAMETER_SETS)
    return [_one(name, d) for name in names for d in sizes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e5 and the default parameter set only")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry with the other benches (output is always JSON)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
