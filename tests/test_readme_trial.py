"""clients/README.md section 4, the trial by hand, run as written where it edits files (issue 19): its
``sed`` lines turn clients/server.toml and each bundle's client.toml into configs the server and the
members accept, secagg and ckks alike (the threshold it gave used to be refused by `server --check`).
The whole trial, processes and all, was run by hand; this keeps its configuration steps honest."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from securefed.client.config import load_client_config
from securefed.secagg.params import SecAggParams
from securefed.server.config import load_server_config
from securefed.transport.member_kit import client_toml

ROOT = Path(__file__).resolve().parents[1]


def _section4() -> tuple[str, str]:
    text = (ROOT / "clients" / "README.md").read_text()
    sec = text[text.index("## 4. A trial deployment by hand"):]
    blocks = re.findall(r"```sh\n(.*?)```", sec, re.S)
    return blocks[0], blocks[1]  # the secagg trial, the ckks changes


def _edits(trial: str, ckks: str | None) -> str:
    """The trial's file edits: from the server.toml sed to the line before the first --check."""
    lines = trial.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("sed -e"))
    last = next(i for i, ln in enumerate(lines) if "--check" in ln)
    script = "\n".join(lines[first:last])
    if ckks is not None:  # "two more expressions for the sed that writes server.toml"
        extra = next(ln.strip() for ln in ckks.splitlines() if ln.strip().startswith("-e 's|^mode"))
        script = script.replace(' "$SECUREFED/clients/server.toml"', f' {extra} "$SECUREFED/clients/server.toml"', 1)
    return script


@pytest.mark.parametrize("mode", ["secagg", "ckks"])
def test_the_trials_edits_make_configs_the_server_and_members_accept(tmp_path, mode):
    trial, ckks = _section4()
    for m in "abc":
        d = tmp_path / f"member-site-{m}"
        d.mkdir()
        (d / "client.toml").write_text(client_toml(f"site-{m}", "127.0.0.1:50551", state_root=".", ckks=mode == "ckks"))
    r = subprocess.run(["bash", "-ec", _edits(trial, ckks if mode == "ckks" else None)], cwd=tmp_path,
                       env={"SECUREFED": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    server = load_server_config(tmp_path / "server.toml")  # check_safety: the refusals `--check` makes
    fed = server.federation
    assert (fed.rounds, fed.cohort_size, fed.min_clients, fed.mode.value) == (2, 3, 3, mode)
    assert server.server.state_dir == tmp_path / "state"
    members = [load_client_config(tmp_path / f"member-site-{m}" / "client.toml") for m in "abc"]
    assert [c.data.demo_client for c in members] == [0, 1, 2] and {c.data.demo_clients for c in members} == {3}
    for c in members:
        assert c.client.planned_rounds == 2 and c.privacy.delta == 1e-5
        assert fed.cohort_size >= c.client.min_cohort_size and fed.threshold >= c.client.min_threshold
        if mode == "secagg":  # each member checks the colluder bound for its own max_colluding_members
            SecAggParams(threshold=fed.threshold, ring_bits=32, frac_bits=24, clip=1.0).check_cohort(
                fed.cohort_size, max_colluders=c.client.max_colluding_members)
        else:
            assert c.client.ckks_secret_context == tmp_path / f"member-{c.client.name}" / "ckks" / "federation.secret.ctx"
    if mode == "ckks":
        assert server.server.ckks_public_context == tmp_path / "ckks" / "federation.public.ctx"
