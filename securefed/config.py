"""Configuration plumbing: strict pydantic models loaded from TOML with errors that name file and key.

Domain models live next to their domain (``secagg.params``, ``privacy.budget``, ``training.config``,
``server.config``, ``client.config``) so each stays small; this module holds what they share.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from securefed.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Frozen, no unknown keys: a typo in a config file is an error, not a silently ignored key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: ``file: key.path: message``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        lines.append(f"{source}: {key}: {msg}")
    return "; ".join(lines)


def parse_model(model: type[M], data: dict, source: str = "<config>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_toml(model: type[M], path: str | Path) -> M:
    """Load and validate a TOML file into ``model``; every failure is a one-line ``ConfigError``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    return parse_model(model, data, str(path))
