"""A member's client.toml: one data source, no zero-noise DP."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.client.config import load_client_config
from securefed.errors import ConfigError

KIT = Path(__file__).resolve().parents[2] / "clients"


def test_client_config_needs_one_data_source_and_refuses_zero_noise(tmp_path):
    base = ('[client]\nname = "a"\nserver = "h:1"\ncredentials_dir = "p"\nstate_dir = "s"\nbase_model_dir = "m"\n'
            '[privacy]\ntarget_epsilon = 1.0\ndelta = 1e-6\n')
    p = tmp_path / "c.toml"
    p.write_text(base + "[data]\n")
    with pytest.raises(ConfigError, match="data.path"):
        load_client_config(p)
    p.write_text(base + '[data]\npath = "d.jsonl"\n[training]\nnoise_multiplier = 0.0\n')
    with pytest.raises(ConfigError, match="no differential privacy"):
        load_client_config(p)
