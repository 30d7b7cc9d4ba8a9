"""No global bundle the server sends crashes a member (issue 10 §4).

A real member daemon (``ClientDaemon`` and its pull loop) is handed plans bound to crafted global
bundles: garbage, truncated, settings that are not JSON or fail validation, LoRA target modules its base
model does not have, weights of 3e38 or NaN, a layout that does not fit, a strategy state of the wrong
size. Each must end only that session, as a typed error logged as a security warning; the daemon then
takes an honest plan (the control that the harness can be accepted at all) and ends cleanly on Done.
The negative control shows what each crafted bundle does to the un-hardened decoding steps (pydantic's
ValidationError, ModelError from the model, ...): errors the pull loop would not have caught.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from member_harness import Federation, bundle_bytes, offer, run
from pydantic import ValidationError

from securefed.client.bundle_check import decode_global, federation_settings
from securefed.client.config import load_client_config
from securefed.client.pull_loop import SESSION_ENDING
from securefed.client.trainer import Trainer
from securefed.errors import InvalidMessage, SecureFedError
from securefed.protocol.bundle import decode_bundle
from securefed.strategies import StrategySettings, make_strategy
from securefed.training.config import LoraSettings


def crafted(fed: Federation) -> dict[str, tuple[bytes, bytes]]:
    """name -> (bundle bytes, the digest the plan binds)."""
    vec, layout, settings, state = fed.vector, fed.layout_json, fed.settings_json, fed.server_state
    honest, digest = fed.honest_bundle()
    s = fed.settings()

    def with_settings(obj) -> tuple[bytes, bytes]:
        return bundle_bytes(vec, layout, obj if isinstance(obj, str) else json.dumps(obj), state)

    huge = np.full_like(vec, 3e38)
    nan = np.array(vec)
    nan[3] = np.nan
    return {
        "garbage": (b"\x08\x00\x00\x00\x00\x00\x00\x00not a safetensors file", digest),
        "truncated": (honest[: len(honest) // 2], digest),
        "settings-not-json": with_settings("{lora: rank 4"),
        "settings-without-strategy": with_settings({"lora": s["lora"]}),
        "settings-nested-deeply": with_settings("[" * 5000 + "]" * 5000),
        "lora-rank-negative": with_settings({**s, "lora": {**s["lora"], "rank": -1}}),
        "strategy-unknown": with_settings({**s, "strategy": {**s["strategy"], "kind": "steal"}}),
        "lora-unknown-module": with_settings({**s, "lora": {**s["lora"], "target_modules": ["no_such_proj"]}}),
        "weights-3e38": bundle_bytes(huge, layout, settings, state),
        "weight-nan": bundle_bytes(nan, layout, settings, state),
        "layout-not-json": bundle_bytes(vec, "{", settings, state),
        "layout-other-size": bundle_bytes(vec[:-4], layout, settings, state),
        "server-state-wrong-size": bundle_bytes(vec, layout, settings, np.zeros(7, np.float32)),
        "digest-not-the-plans": (honest, bytes(32)),
    }


@pytest.mark.slow  # a member daemon serving nine sessions, training the honest one
def test_crafted_global_bundles_end_the_session_and_the_member_keeps_serving(tmp_path, tiny_model, caplog):
    fed = Federation(tmp_path, tiny_model)
    daemon, server, watch = fed.member()
    bad = crafted(fed)
    for attempt, (name, (data, digest)) in enumerate(bad.items(), start=1):
        offer(server, attempt, fed.plan(attempt, digest), data, abort_after=False)
    good = len(bad) + 1
    honest, digest = fed.honest_bundle()
    offer(server, good, fed.plan(good, digest), honest)
    server.bundles[-1] = (0, honest)  # the final adapter on Done
    with caplog.at_level(logging.WARNING, logger="securefed"):
        assert run(daemon) == 0  # Done: the daemon was never brought down
    assert server.accepted() == [good]  # every crafted plan was left untrained; the honest one was taken
    assert server.advertised() == [good]
    warnings = [r for r in caplog.records if r.getMessage().startswith("security: session ended")]
    # A bundle that is not the plan's is a security alert (an ERROR, reported to the operator); every
    # other crafted bundle ends its session with a warning.
    alerts = [r for r in caplog.records if r.getMessage().startswith("SECURITY: digest check failed")]
    assert len(warnings) == len(bad) - 1 and len(alerts) == 1
    assert all(r.levelno == logging.WARNING for r in warnings) and alerts[0].levelno == logging.ERROR


def test_control_the_crafted_bundles_break_the_unhardened_decoding(tmp_path, tiny_model):
    """Negative control: without the member's typed decoding, these bundles raise errors the pull loop
    does not treat as a session ending (the crash the issue reproduced)."""

    fed = Federation(tmp_path, tiny_model)
    bad = crafted(fed)
    escaped = {}
    trainer = Trainer(load_client_config(fed.p.client_tomls["member-1"]))
    for name in ("lora-rank-negative", "strategy-unknown", "lora-unknown-module", "weight-nan", "layout-not-json"):
        b = decode_bundle(bad[name][0])  # the framing and digest are fine: these pass the old check
        try:
            settings = json.loads(b.settings_json)
            lora = LoraSettings.model_validate(settings["lora"])
            make_strategy(StrategySettings.model_validate(settings["strategy"]), dim=b.vector.size)
            trainer.load_global(lora, b)
        except (ValidationError, SecureFedError) as exc:
            escaped[name] = exc
    assert set(escaped) == {"lora-rank-negative", "strategy-unknown", "lora-unknown-module", "weight-nan",
                            "layout-not-json"}
    # The pull loop ends a session only on these; anything else ends the daemon.
    assert not any(isinstance(e, SESSION_ENDING) for e in escaped.values()), escaped
    # ... and the member's decoding turns each into InvalidMessage before anything is trained.
    for name in escaped:
        if name == "lora-unknown-module":  # only the base model can tell: the daemon wraps loading it
            daemon, _, _ = fed.member()
            fs = federation_settings(decode_global(bad[name][0]))
            with pytest.raises(InvalidMessage, match="does not fit this member's base model"):
                daemon._load_global(fs.lora, decode_global(bad[name][0]))
            daemon.close()
        else:
            with pytest.raises(InvalidMessage):
                federation_settings(decode_global(bad[name][0]))
