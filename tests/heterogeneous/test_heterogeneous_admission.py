"""A member that would train part of the adapter declines a federation that aggregates whole adapters
only (its payload would be averaged as if it had trained everything), saying what to change."""

from __future__ import annotations

from member_harness import Federation, offer, run


def test_heterogeneous_partial_member_declines_a_federation_of_whole_adapters(tmp_path, tiny_model):
    fed = Federation(tmp_path, tiny_model, client={"capacity": {"rank": 2}})
    daemon, server, watch = fed.member()
    honest, digest = fed.honest_bundle()
    offer(server, 1, fed.plan(1, digest), honest)
    server.bundles[-1] = (0, honest)
    assert run(daemon) == 0
    ((attempt, participates, reason),) = server.decisions()
    assert attempt == 1 and not participates
    assert "rank 2 of 4" in reason and "heterogeneous = true" in reason
    assert watch.released_attempts == [] and server.advertised() == []
