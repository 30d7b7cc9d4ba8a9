"""End to end (slow): a real server over mutual TLS and three member daemons that train LoRA at ranks
2, 4 and 8 of the federation's 8 complete a round under secure aggregation, and the new global
adapter is the per-parameter weighted average of what they released, computed here in the clear."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import FAST_CLIENT, fast_server, recorders

from securefed.federation import provision, run_in_process
from securefed.heterogeneous.groups import ParameterGroups
from securefed.protocol.bundle import read_adapter_file

pytestmark = pytest.mark.slow

RANKS = {"member-1": 2, "member-2": 4, "member-3": None}  # None: the federation's whole rank 8


def test_heterogeneous_ranks_2_4_8_complete_a_secure_round_with_the_exact_weighted_average(tmp_path, tiny_model):
    server = fast_server()
    server.update(lora={"rank": 8, "alpha": 16.0}, strategy={"heterogeneous": True})
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model, server=server,
                  client=FAST_CLIENT,
                  per_client={m: {"capacity": {"rank": r}} for m, r in RANKS.items() if r is not None})
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=240)
    assert res.ok
    store = res.server.coordinator.store
    prev = read_adapter_file(store.path_for(0))
    got = read_adapter_file(store.path_for(1)).vector.astype(np.float64)
    groups = ParameterGroups.from_layout_json(prev.layout_json)
    dim, g = prev.vector.size, groups.size
    payloads = {m: watch[m].released_payloads[1] for m in RANKS}
    # every upload has the same size whatever the member trained
    assert {v.size for v in payloads.values()} == {dim + 1 + g}
    num, den = np.zeros(dim), np.zeros(dim)
    for m, rank in RANKS.items():
        v = payloads[m]
        w, trained = v[dim], v[dim + 1:] / v[dim]
        np.testing.assert_array_equal(trained, groups.indicator(rank=rank))  # it says what it trained...
        outside = groups.expand(trained) == 0
        assert np.all(v[:dim][outside] == 0) and np.any(v[:dim][~outside] != 0)  # ...and trained just that
        num += v[:dim]
        den += w * groups.expand(trained)
    expected = prev.vector + np.divide(num, den, out=np.zeros(dim), where=den > 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    # slots 4..7 were trained by member-3 alone: there the average is its own update, undiluted
    only3 = groups.expand(groups.indicator(rank=8) - groups.indicator(rank=4)) == 1
    w3 = payloads["member-3"][dim]
    np.testing.assert_allclose(got[only3] - prev.vector[only3], payloads["member-3"][:dim][only3] / w3, atol=1e-7)
