"""Federations agree on the library versions that change numbers: the plan states them, a member
compares major.minor and warns or declines, ledgers record them and the audit report shows them."""

from __future__ import annotations

import logging

import pytest

from securefed import versions
from securefed.client import admission
from securefed.client.library_check import LibraryVersionCheck
from securefed.transport._generated import federation_pb2 as pb

HAVE = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "peft": "0.21.2", "opacus": "1.6.0",
        "bitsandbytes": "0.50.2", "tenseal": "0.3.18"}


@pytest.mark.parametrize(("version", "expected"), [("2.13.0+cpu", "2.13"), ("5.25.3", "5.25"), ("1.6", "1.6"),
                                                   ("0.3.18.dev1", "0.3"), ("absent", "absent"), ("weird!", "weird!")])
def test_major_minor(version, expected):
    assert versions.major_minor(version) == expected


def test_only_a_major_or_minor_difference_counts():
    assert versions.mismatches({**HAVE, "torch": "2.13.1", "peft": "0.21.0"}, HAVE) == []
    assert versions.mismatches({}, HAVE) == []  # an older server names none
    differ = versions.mismatches({**HAVE, "transformers": "5.24.0", "opacus": "2.0.0"}, HAVE)
    assert differ == ["transformers 5.25.0 (federation expects 5.24.0)", "opacus 1.6.0 (federation expects 2.0.0)"]
    assert versions.mismatches({"tenseal": "0.3.18"}, {k: v for k, v in HAVE.items() if k != "tenseal"}) == [
        "tenseal absent (federation expects 0.3.18)"]


def _plan(require: bool, **expected) -> pb.RoundPlan:
    return pb.RoundPlan(round=1, expected_library_versions={**HAVE, **expected}, require_library_versions=require)


def test_a_member_warns_once_by_default_and_declines_when_the_federation_requires_equal_versions(caplog):
    check = LibraryVersionCheck(have=HAVE)
    assert check.decline_reason(_plan(False)) is None
    with caplog.at_level(logging.WARNING, logger="securefed.client"):
        assert check.decline_reason(_plan(False, transformers="5.24.0")) is None
        assert check.decline_reason(_plan(False, transformers="5.24.0")) is None  # the same difference again
    warnings = [r.getMessage() for r in caplog.records if "library versions differ" in r.getMessage()]
    assert len(warnings) == 1 and "transformers 5.25.0 (federation expects 5.24.0)" in warnings[0]
    reason = check.decline_reason(_plan(True, peft="0.20.0"))
    assert reason is not None and "peft 0.21.2 (federation expects 0.20.0)" in reason and "requirements.lock" in reason
    assert admission.library_versions_reason(_plan(True), HAVE) == (None, None)


def test_the_server_states_its_own_versions_unless_told_otherwise(tmp_path):
    from securefed.server.config import ServerConfig

    base = {"server": {"credentials_dir": str(tmp_path), "state_dir": str(tmp_path), "base_model_dir": str(tmp_path)}}
    cfg = ServerConfig.model_validate(base)
    assert cfg.federation.library_versions == "warn"
    mine = cfg.expected_library_versions()
    assert mine["torch"] == versions.version_of("torch") and "securefed" not in mine
    pinned = ServerConfig.model_validate({**base, "federation": {"library_versions": "require",
                                                                 "expected_library_versions": {"torch": "2.12.0"}}})
    assert pinned.expected_library_versions()["torch"] == "2.12.0"
    with pytest.raises(Exception, match="expected_library_versions"):
        ServerConfig.model_validate({**base, "federation": {"expected_library_versions": {"numpy": "2.0"}}})


def test_the_audit_report_shows_what_each_member_ran_and_flags_a_difference():
    from securefed.privacy.report import _versions_html, library_versions

    full = {"securefed": "0.1.0", **HAVE}
    clients = [{"source": "a.sqlite", "client_id": "site-a", "rounds": [{"library_versions": full}]},
               {"source": "b.sqlite", "client_id": "site-b",
                "rounds": [{"library_versions": {**full, "opacus": "1.5.4"}}]},
               {"source": "c.sqlite", "client_id": "site-c", "rounds": []}]
    lv = library_versions(clients)
    assert lv["differ"] == ["opacus"] and [m["client_id"] for m in lv["members"]] == ["site-a", "site-b"]
    page = "".join(_versions_html({"library_versions": lv}))
    assert "1.5.4" in page and "different major.minor versions of: opacus" in page
    same = library_versions(clients[:1])
    assert same["differ"] == [] and "Members ran different" not in "".join(_versions_html({"library_versions": same}))
