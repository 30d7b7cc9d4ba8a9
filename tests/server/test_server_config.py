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
    assert s.federation.mode.value == "secagg" and s.federation.threshold == 7
    assert s.federation.max_colluding_members == 2
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


def test_default_ring_is_the_smallest_that_cannot_overflow(tmp_path):
    """No ring_bits: 32 bits while cohort * clip * 2^frac_bits fits, 64 beyond, refused beyond both."""
    small = load_server_config(_server_toml(tmp_path, "cohort_size = 10\nmin_clients = 8\nthreshold = 6\n"))
    assert small.federation.ring_bits is None and small.ring_bits() == 32
    assert small.secagg_params(10).ring_bits == 32
    small.secagg_params(10).check_cohort(10)  # the chosen ring really holds the sum
    # 200 members * clip 1 * 2^24 > 2^31 - 1: the 32-bit ring could overflow, so 64 is chosen.
    big = load_server_config(_server_toml(tmp_path, "cohort_size = 200\nmin_clients = 150\nthreshold = 101\n"))
    assert big.ring_bits() == 64
    # Control: forcing 32 bits on that cohort is refused, naming the fix.
    with pytest.raises(InsecureParameters, match="ring_bits=64"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 200\nmin_clients = 150\nthreshold = 101\nring_bits = 32\n"))
    with pytest.raises(InsecureParameters, match="lower frac_bits"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 10\nmin_clients = 8\nthreshold = 6\nfrac_bits = 30\n"
                                                  "ring_bits = 32\n"))
    explicit = load_server_config(_server_toml(tmp_path, "cohort_size = 10\nmin_clients = 8\nthreshold = 6\nring_bits = 64\n"))
    assert explicit.ring_bits() == 64


def test_the_shipped_example_uses_the_32_bit_ring():
    s = load_server_config(KIT / "server.toml")
    assert s.ring_bits() == 32 and s.secagg_params(s.federation.cohort_size).ring_bits == 32


def test_a_threshold_too_low_for_the_declared_colluders_is_refused(tmp_path, capsys):
    """The issue's setup: 10 members, t = 6, up to 2 colluding: one colluder signing two survivor lists
    exposes a member (2t >= m + c + 1 needs t >= 7). ``securefed server`` refuses it in one line."""
    from securefed.cli import main

    bad = "cohort_size = 10\nmin_clients = 10\nthreshold = 6\nmax_colluding_members = 2\n"
    with pytest.raises(InsecureParameters, match="max_colluding_members = 2.*set threshold >= 7"):
        load_server_config(_server_toml(tmp_path, bad))
    assert main(["server", "--config", str(_server_toml(tmp_path, bad))]) == 2
    err = capsys.readouterr().err.strip()
    assert "set threshold >= 7" in err and "Traceback" not in err and len(err.splitlines()) == 1
    ok = load_server_config(_server_toml(tmp_path, bad.replace("threshold = 6", "threshold = 7")))
    assert ok.federation.threshold == 7
    # The default assumes one colluder: t = 6 of 10 passes it, t = 5 does not.
    load_server_config(_server_toml(tmp_path, "cohort_size = 10\nmin_clients = 10\nthreshold = 6\n"))
    with pytest.raises(InsecureParameters, match="max_colluding_members = 1"):
        load_server_config(_server_toml(tmp_path, "cohort_size = 10\nmin_clients = 10\nthreshold = 5\n"))
