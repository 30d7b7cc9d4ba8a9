"""Hot-path guard: add_mask_ must cost about what producing the same keystream costs.

Timing on a shared machine is noisy, so each side takes the best of several interleaved runs;
the bound is the issue's target (within 1.5x of generating the keystream as an array). A
regression to "materialise the whole mask, then add" or to a pure-Python loop fails it.
"""

from __future__ import annotations

import secrets
import time

import numpy as np

from securefed.crypto.prg import add_mask_, expand_mask


def _best(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_add_mask_within_1_5x_of_keystream_generation():
    key = secrets.token_bytes(32)
    d = 1 << 22  # 16 MiB of uint32: larger than L2, like a LoRA update
    acc = np.zeros(d, dtype=np.uint32)
    attempts = []
    for _ in range(3):  # a real regression fails every attempt; a load burst rarely hits all three
        t_stream, t_mask = float("inf"), float("inf")
        for _ in range(3):  # interleave so a burst of load hits both sides
            t_stream = min(t_stream, _best(lambda: expand_mask(key, d, 32)))
            t_mask = min(t_mask, _best(lambda: add_mask_(acc, key, 1)))
        attempts.append(t_mask / t_stream)
        if t_mask <= 1.5 * t_stream:
            break
    assert min(attempts) <= 1.5, f"add_mask_ / keystream time ratios {attempts} exceed 1.5"
