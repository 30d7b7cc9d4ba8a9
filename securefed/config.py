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


def check_address(value: str, *, allow_port_zero: bool = False) -> str:
    """``host:port`` with an explicit port (``[v6]:port`` for IPv6); a pydantic validator's body.

    gRPC takes an address without a port as port 443 without a word, so a forgotten port would
    bind or dial the wrong service silently."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        if sep and ":" in host:
            raise ValueError(f"{value!r}: write an IPv6 address in brackets with its port, e.g. [::1]:50051")
        raise ValueError(f"{value!r} has no port: write host:port, e.g. {value or 'localhost'}:50051 "
                         "(without one gRPC silently uses 443)")
    low = 0 if allow_port_zero else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from {low} to 65535")
    return value


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
