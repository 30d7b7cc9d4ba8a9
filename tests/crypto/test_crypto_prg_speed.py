"""Hot-path guard: add_mask_ streams the keystream through one cache-sized block.

Speed itself is measured by ``bench/secagg.py`` (``client_mask_over_keystream``), never by a
timed test. What a test can pin without a clock is the shape that makes it fast: masking a
16 MiB accumulator allocates a bounded block, not a second array of the accumulator's size
(the "materialise the whole mask, then add" regression), and the result equals that slow form.
"""

from __future__ import annotations

import secrets
import tracemalloc

import numpy as np

from securefed.crypto.prg import add_mask_, expand_mask


def test_add_mask_allocates_a_bounded_block_not_the_whole_mask():
    key = secrets.token_bytes(32)
    d = 1 << 22  # 16 MiB of uint32: larger than L2, like a LoRA update
    acc = np.zeros(d, dtype=np.uint32)
    tracemalloc.start()
    try:
        add_mask_(acc, key, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < acc.nbytes // 8, f"add_mask_ peaked at {peak} bytes for a {acc.nbytes}-byte accumulator"
    # negative control: the materialising form this guards against is caught by the same measure
    tracemalloc.start()
    try:
        slow = np.zeros(d, dtype=np.uint32)
        slow += expand_mask(key, d, 32)
        _, slow_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert slow_peak >= acc.nbytes
    assert np.array_equal(acc, slow)
