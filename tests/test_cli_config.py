from __future__ import annotations

import pytest
from pydantic import Field

from securefed.cli import main
from securefed.config import StrictModel, load_toml
from securefed.errors import ConfigError


class _Example(StrictModel):
    rounds: int = Field(gt=0, description="number of rounds")
    name: str = "x"


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "secure aggregation" in capsys.readouterr().out


def test_load_toml_names_file_and_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("rounds = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_toml(_Example, p)
    assert str(p) in str(exc.value) and "rounds" in str(exc.value)


def test_load_toml_rejects_unknown_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("rounds = 1\nrouns = 2\n")
    with pytest.raises(ConfigError, match="rouns: unknown key"):
        load_toml(_Example, p)


def test_load_toml_bad_syntax_and_missing(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("rounds = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(_Example, p)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(_Example, tmp_path / "missing.toml")
    p.write_text("rounds = 3\n")
    assert load_toml(_Example, p).rounds == 3
