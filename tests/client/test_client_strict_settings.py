"""Federation settings and plan fields a member does not know are refused, never ignored (issue 17,
attack 5): a server that sends ``training``/``dp``/``privacy`` settings (sigma 0, clip 1e9, epsilon 1e6)
used to have them dropped in silence, the member training under its own rules: the right outcome, the
wrong signal. Now the member leaves the session with one line naming what it did not understand and its
version, as a security alert it reports to the operator. One test per settings section and per plan
message; the control shows the settings accepted in silence without the check."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from securefed import __version__
from securefed.client import alerts, bundle_check
from securefed.client.admission import check_plan
from securefed.client.bundle_check import federation_settings
from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import SecurityAlert
from securefed.protocol.bundle import decode_bundle, encode_bundle
from securefed.protocol.plan import seal_plan, unknown_fields
from securefed.training.config import LoraSettings
from securefed.strategies import StrategySettings
from securefed.transport._generated import federation_pb2 as pb

SETTINGS = {"lora": LoraSettings(rank=4, alpha=8.0).model_dump(mode="json"),
            "strategy": StrategySettings().model_dump(mode="json"), "base_model": {"fingerprint": "ab" * 32}}
HOSTILE = {"training": {"noise_multiplier": 0.0, "max_grad_norm": 1e9}, "dp": {"sigma": 0.0},
           "privacy": {"target_epsilon": 1e6}}


def _bundle(settings: dict):
    layout = json.dumps({"tensors": [], "version": 1})
    data, _ = encode_bundle(np.zeros(4, np.float32), layout, json.dumps(settings, sort_keys=True))  # settings only
    return decode_bundle(data)


def _refused(settings: dict) -> str:
    with pytest.raises(SecurityAlert) as exc:
        federation_settings(_bundle(settings))
    msg = str(exc.value)
    assert "\n" not in msg and __version__ in msg and exc.value.kind == "plan"
    assert alerts.alert_kind(exc.value) == "plan"  # the pull loop logs it as an ERROR and reports it
    return msg


@pytest.mark.parametrize("section", sorted(HOSTILE))
def test_an_unknown_settings_section_is_refused_naming_it(section):
    assert f"'{section}'" in _refused({**SETTINGS, section: HOSTILE[section]})


@pytest.mark.parametrize("section", ["lora", "strategy", "base_model"])
def test_an_unknown_key_in_a_known_section_is_refused_naming_it(section):
    assert f"'{section}.noise_multiplier'" in _refused({**SETTINGS, section: {**SETTINGS[section], "noise_multiplier": 0.0}})


def test_the_known_settings_still_pass():
    assert federation_settings(_bundle(SETTINGS)).lora.rank == 4


def test_control_without_the_check_the_hostile_sections_are_dropped_in_silence(monkeypatch):
    monkeypatch.setattr(bundle_check, "_refuse_unknown", lambda keys: None)
    fed = federation_settings(_bundle({**SETTINGS, **HOSTILE}))
    assert fed.lora.rank == 4 and "privacy" in fed.raw  # accepted: nothing said, nothing applied


# --- plan fields ------------------------------------------------------------------------------------

ME = IdentityKeyPair.generate()


def _plan() -> pb.RoundPlan:
    cohort = [pb.CohortMember(client_id=c, identity_public_key=(ME.public_bytes() if c == "alice" else bytes([i]) * 32))
              for i, c in enumerate(("alice", "bob", "carol"))]
    return pb.RoundPlan(round=4, global_adapter_sha256=b"\x05" * 32, mode=pb.AGGREGATION_MODE_SECAGG, vector_length=9,
                        cohort=cohort, secagg=pb.SecAggParams(threshold=3), strategy=pb.StrategyParams(),
                        ckks=pb.CkksParams())


def _with_field_250(msg):
    out = type(msg)()
    out.ParseFromString(msg.SerializeToString() + bytes([0xD0, 0x0F, 0x01]))  # field 250, varint 1
    return out


@pytest.mark.parametrize("where", ["", "secagg", "strategy", "ckks", "cohort"])
def test_a_plan_field_this_member_does_not_know_is_refused_naming_it(where):
    plan = _plan()
    if where == "":
        plan = _with_field_250(plan)
        want = "RoundPlan field 250"
    elif where == "cohort":
        plan.cohort[1].CopyFrom(_with_field_250(plan.cohort[1]))
        want = "RoundPlan.cohort[1] field 250"
    else:
        getattr(plan, where).CopyFrom(_with_field_250(getattr(plan, where)))
        want = f"RoundPlan.{where} field 250"
    seal_plan(plan)
    assert unknown_fields(plan) == [want]
    with pytest.raises(SecurityAlert, match=re.escape(want)) as exc:
        check_plan(plan, "alice", ME.public_bytes(), ca=None)  # type: ignore[arg-type]
    refused = alerts.refused_plan(exc.value, 4)
    assert str(refused).startswith("attempt 4: the plan carries") and __version__ in str(refused)


def test_a_plan_without_unknown_fields_has_none():
    assert unknown_fields(seal_plan(_plan())) == []
