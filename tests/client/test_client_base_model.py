"""The base-model rule of admission (pure): decline a plan for another base checkpoint, naming both
fingerprints; leave a session whose plan and bundle disagree on the base."""

from __future__ import annotations

import pytest

from securefed.client.admission import base_model_reason
from securefed.errors import ProtocolAbort
from securefed.protocol.plan import seal_plan
from securefed.transport._generated import federation_pb2 as pb

MINE = "ab" * 32
OTHER = "cd" * 32


def _plan(fp: str) -> pb.RoundPlan:
    return seal_plan(pb.RoundPlan(round=1, global_adapter_sha256=b"\x01" * 32, vector_length=4,
                                  base_model_fingerprint=bytes.fromhex(fp) if fp else b""))


def _settings(fp: str | None) -> dict:
    return {"lora": {}, "strategy": {}, "base_model": {"fingerprint": fp}}


def test_same_base_is_taken():
    assert base_model_reason(_plan(MINE), _settings(MINE), MINE) is None


def test_another_base_is_declined_naming_both_fingerprints():
    why = base_model_reason(_plan(OTHER), _settings(OTHER), MINE)
    assert why is not None and OTHER[:16] in why and MINE[:16] in why


def test_a_plan_without_a_fingerprint_is_declined():
    assert "no base-model fingerprint" in base_model_reason(_plan(""), _settings(None), MINE)


@pytest.mark.parametrize("bundled", [OTHER, None, "zz"])
def test_plan_and_bundle_naming_different_bases_end_the_session(bundled):
    with pytest.raises(ProtocolAbort, match="different base models"):
        base_model_reason(_plan(MINE), _settings(bundled), MINE)
    with pytest.raises(ProtocolAbort):
        base_model_reason(_plan(MINE), {"lora": {}, "strategy": {}}, MINE)
