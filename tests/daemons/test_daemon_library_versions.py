"""A federation that requires equal library versions: members running another major.minor of a
numerics library decline every plan (before loading the model), naming the library; nothing is trained."""

from __future__ import annotations

import pytest
from daemon_helpers import FAST_CLIENT, fast_server, recorders

from securefed.federation import provision, run_in_process
from securefed.server.roundlog import RoundLog

pytestmark = pytest.mark.slow


def test_members_with_other_versions_decline_when_the_federation_requires_equal_ones(tmp_path, tiny_model):
    server = fast_server()
    server["federation"].update(library_versions="require", expected_library_versions={"opacus": "1.5.0"},
                                max_attempts=1)
    p = provision(tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model, server=server,
                  client=FAST_CLIENT)
    watch = recorders(p.client_tomls)
    res = run_in_process(p, hooks=watch, timeout_s=120)
    assert not res.ok  # no round can run
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    try:
        (rec,) = log.attempts()
    finally:
        log.close()
    assert set(rec.declined) == {"member-1", "member-2", "member-3"}
    for why in rec.declined.values():
        assert "opacus" in why and "federation expects 1.5.0" in why
    for name, member in res.clients.items():
        assert member.rounds_trained == 0 and not watch[name].released_payloads
        assert member.trainer._model is None  # declined before loading anything
