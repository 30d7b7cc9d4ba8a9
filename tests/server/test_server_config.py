"""The operator's server.toml: the kit's examples load, unsafe setups are refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.client.config import load_client_config
from securefed.errors import ConfigError, InsecureParameters
from securefed.server.config import load_server_config

KIT = Path(__file__).resolve().parents[2] / "clients"


def test_example_configs_in_the_kit_load():
    s = load_server_config(KIT / "server.toml")
    assert s.federation.mode.value == "secagg" and s.federation.threshold == 6
    assert s.server.state_dir.is_absolute()
    c = load_client_config(KIT / "client.toml")
    assert c.privacy.target_epsilon == 8.0 and c.ledger_path is None and c.client.ledger_dir.is_absolute()
    assert c.client.state_dir.is_absolute()  # not under the read-only config directory


def _server_toml(tmp_path: Path, federation: str) -> Path:
    p = tmp_path / "server.toml"
    p.write_text('[server]\ncredentials_dir = "pki"\nstate_dir = "st"\nbase_model_dir = "m"\n[federation]\n' + federation)
    return p


def test_plaintext_refused_unless_debug_flag(tmp_path):
    with pytest.raises(InsecureParameters, match="allow_plaintext_for_debugging"):
        load_server_config(_server_toml(tmp_path, 'mode = "plaintext"\n'))
    cfg = load_server_config(_server_toml(tmp_path, 'mode = "plaintext"\nallow_plaintext_for_debugging = true\n'))
    assert cfg.federation.mode.value == "plaintext"


def test_unsafe_secagg_threshold_refused(tmp_path):
    # t = 2 of 4 share holders is not a strict majority: two disjoint groups could unmask one client.
    with pytest.raises(InsecureParameters, match="threshold"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 4\nmin_clients = 4\nthreshold = 2\n"))
    with pytest.raises(InsecureParameters, match="threshold must be >= 2"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 3\nmin_clients = 3\nthreshold = 1\n"))


def test_invalid_neighbour_degree_is_one_config_line(tmp_path):
    # SecAggParams' own validation (odd degree) must surface as one line naming the key, not a pydantic dump.
    with pytest.raises(InsecureParameters) as exc:
        load_server_config(_server_toml(tmp_path, "cohort_size = 5\nmin_clients = 4\nthreshold = 3\nneighbour_degree = 1\n"))
    assert "\n" not in str(exc.value) and "federation: neighbour_degree" in str(exc.value)


def test_ckks_needs_public_context_and_typos_are_errors(tmp_path):
    with pytest.raises(InsecureParameters, match="ckks_public_context"):
        load_server_config(_server_toml(tmp_path, 'mode = "ckks"\n'))
    with pytest.raises(ConfigError, match="treshold: unknown key"):
        load_server_config(_server_toml(tmp_path, "treshold = 2\n"))
    p = tmp_path / "ckks.toml"
    p.write_text('[server]\ncredentials_dir = "pki"\nstate_dir = "st"\nbase_model_dir = "m"\nckks_public_context = "c"\n'
                 '[federation]\nmode = "ckks"\ncohort_size = 4\nmin_clients = 4\nthreshold = 2\n')
    with pytest.raises(InsecureParameters, match="strict majority"):
        load_server_config(p)
