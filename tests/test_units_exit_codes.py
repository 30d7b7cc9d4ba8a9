"""The shipped systemd units restart a daemon after anything but a deliberate exit (issue 19), and the
daemons' exit codes mean what the units assume: 0 nothing left to do, 2 a configuration or
certificate problem, 4 (server) max_attempts spent; a full disk or an unreachable server is restarted."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_deployment_kit import KIT, unit

from securefed import exit_codes
from securefed.client import pull_loop
from securefed.errors import (
    CertificateError,
    CertificateRevoked,
    ConfigError,
    DiskWriteError,
    InvalidInput,
    LedgerBudgetChanged,
    ModelError,
)


@pytest.mark.parametrize("name, deliberate", [("securefed-client.service", {exit_codes.FINISHED, exit_codes.CONFIG}),
                                              ("securefed-server.service", set(exit_codes.DELIBERATE))])
def test_units_restart_on_anything_but_a_deliberate_exit(name, deliberate):
    u = unit(KIT / name)
    assert u["Restart"] == ["always"]  # not on-failure: a clean-looking exit the daemon did not mean is restarted too
    prevent = {int(x) for v in u["RestartPreventExitStatus"] for x in v.split()}
    assert prevent == deliberate
    assert not prevent & {exit_codes.FAULT, exit_codes.SERVER_UNREACHABLE}


def test_what_cannot_be_fixed_by_a_restart_exits_2_and_what_can_is_restarted():
    for err in (ConfigError, CertificateError, CertificateRevoked, LedgerBudgetChanged, InvalidInput, ModelError):
        assert err("x").exit_code == exit_codes.CONFIG, err
    assert DiskWriteError("x").exit_code == exit_codes.FAULT  # free space, and the restart resumes
    assert pull_loop.EXIT_DONE == exit_codes.FINISHED
    assert pull_loop.EXIT_CERTIFICATE == exit_codes.CONFIG
    assert pull_loop.EXIT_SERVER_UNREACHABLE == exit_codes.SERVER_UNREACHABLE


def test_the_units_say_what_the_codes_mean():
    for name in ("securefed-client.service", "securefed-server.service"):
        text = (KIT / name).read_text()
        assert "exit_codes.py" in text and "nothing left to do" in text
    assert Path(exit_codes.__file__).read_text().count("DELIBERATE") >= 2
