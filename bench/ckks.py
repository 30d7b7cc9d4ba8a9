"""CKKS aggregation benchmark: time, bytes on the wire and error for vectors of d parameters.

``run(quick)`` returns one record per (parameter set, d); ``python bench/ckks.py [--quick]`` prints
them as one JSON array. Times are wall-clock on this machine (single-threaded SEAL); ``*_per_mparam``
fields divide by d / 1e6. ``add_s`` is the server's cost to check and add one more client's vector.
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


def _one(params_name: str, d: int) -> dict:
    params = he.get_params(params_name)
    client = he.generate_client_context(params)
    server_ctx = he.ServerContext.from_public_bytes(client.public_bytes(), params)
    data_rng = np.random.default_rng(d)  # not secret: benchmark data
    xs = [data_rng.uniform(-1.0, 1.0, d) for _ in range(N_CLIENTS)]

    t0 = time.perf_counter()
    encs = [client.encrypt(x) for x in xs]
    encrypt_s = (time.perf_counter() - t0) / N_CLIENTS

    agg = he.ServerAggregator(server_ctx, d)
    agg.add(encs[0].to_chunks())  # the first one only deserializes; time the additions after it
    t0 = time.perf_counter()
    for e in encs[1:]:
        agg.add(e.to_chunks())
    add_s = (time.perf_counter() - t0) / (N_CLIENTS - 1)
    t0 = time.perf_counter()
    result = agg.result_chunks()
    serialize_sum_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    total = client.decrypt(result, d, summands=N_CLIENTS)
    decrypt_s = time.perf_counter() - t0
    expected = np.sum(xs, axis=0)
    raw = client._decode_checked(result, d, N_CLIENTS)  # the CKKS error alone, never released

    per_m = 1e6 / d
    return {
        "name": "ckks",
        "params": params_name,
        "d": d,
        "clients": N_CLIENTS,
        "encrypt_s": encrypt_s,
        "add_s": add_s,
        "serialize_sum_s": serialize_sum_s,
        "decrypt_s": decrypt_s,
        "encrypt_s_per_mparam": encrypt_s * per_m,
        "add_s_per_mparam": add_s * per_m,
        "decrypt_s_per_mparam": decrypt_s * per_m,
        "bytes_per_param": encs[0].nbytes / d,
        "download_bytes_per_param": sum(len(c) for c in result) / d,
        "max_abs_error": float(np.max(np.abs(total - expected))),
        "ckks_error_before_flooding": float(np.max(np.abs(raw - expected))),
        "flood_sigma": params.flood_sigma,
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
