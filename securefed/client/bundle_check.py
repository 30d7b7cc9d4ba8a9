"""The global bundle the server sends, decoded as untrusted input: bytes -> checked values -> settings.

``decode_global`` verifies the safetensors framing and the digest (``protocol.bundle``), then that the
adapter and the strategy's server state are finite and of a sane size; ``federation_settings`` parses
the settings JSON into the LoRA and strategy settings every member applies, and builds the strategy for
this adapter. Every failure is an ``InvalidMessage`` (``CheckpointError`` for the framing) naming what
was wrong, so a crafted bundle ends that session with a security warning and the daemon keeps serving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from securefed import __version__
from securefed.config import format_validation_error
from securefed.errors import InvalidMessage, SecureFedError, SecurityAlert
from securefed.protocol.bundle import Bundle, decode_bundle
from securefed.strategies import StrategySettings, make_strategy
from securefed.strategies.base import Strategy
from securefed.training.adapter import AdapterLayout
from securefed.training.config import LoraSettings

# A trained LoRA adapter moves by clipped deltas (strategy.delta_bound) a round; a weight this large is no
# adapter (3e38 overflows the first matmul) and is refused before anything is loaded or trained.
MAX_ADAPTER_ABS = 1e4
WHAT = "the global bundle from the server"
# Every key a member of this version understands. A key it does not know is refused, never ignored: a
# server that sends "privacy" or "dp" settings expects them applied, and a member that drops them
# silently trains under rules nobody agreed to (issue 17, attack 5).
KNOWN_SECTIONS = frozenset({"lora", "strategy", "base_model"})
KNOWN_BASE_MODEL_KEYS = frozenset({"fingerprint"})


@dataclass(frozen=True)
class FederationSettings:
    lora: LoraSettings
    strategy: Strategy
    raw: dict  # the settings JSON as sent: admission.base_model_reason reads its base_model entry itself


def decode_global(data: bytes) -> Bundle:
    """A verified bundle whose adapter values and layout this member can load."""
    bundle = decode_bundle(data, WHAT)
    for name, vec in (("adapter", bundle.vector), ("server state", bundle.server_state)):
        if vec is None:
            continue
        if vec.size and not np.all(np.isfinite(vec)):
            raise InvalidMessage(f"{WHAT}: the {name} holds NaN or Inf")
        if vec.size and float(np.max(np.abs(vec))) > MAX_ADAPTER_ABS:
            raise InvalidMessage(f"{WHAT}: the {name} holds values above {MAX_ADAPTER_ABS:g} in magnitude")
    try:
        layout = AdapterLayout.from_json(bundle.layout_json)
    except SecureFedError as exc:
        raise InvalidMessage(f"{WHAT}: {exc}") from None
    if layout.total_size != bundle.vector.size:
        raise InvalidMessage(f"{WHAT}: its layout describes {layout.total_size} values, the adapter has "
                             f"{bundle.vector.size}")
    return bundle


def _refuse_unknown(keys: list[str]) -> None:
    if keys:
        raise SecurityAlert(f"{WHAT}: its federation settings carry {', '.join(map(repr, keys))}, which this member "
                            f"(securefed {__version__}) does not know: refused rather than ignored (upgrade the "
                            "member if the federation needs it)", kind="plan")


def federation_settings(bundle: Bundle) -> FederationSettings:
    """The LoRA settings and the strategy the bundle's settings JSON names, validated."""
    try:
        settings = json.loads(bundle.settings_json)
    except (ValueError, RecursionError):
        raise InvalidMessage(f"{WHAT}: its federation settings are not JSON") from None
    if not isinstance(settings, dict) or not all(isinstance(settings.get(k), dict) for k in ("lora", "strategy")):
        raise InvalidMessage(f"{WHAT}: its federation settings need 'lora' and 'strategy' objects")
    base = settings.get("base_model")
    base_keys = set(base) if isinstance(base, dict) else set()
    _refuse_unknown(sorted(set(settings) - KNOWN_SECTIONS)
                    + [f"base_model.{k}" for k in sorted(base_keys - KNOWN_BASE_MODEL_KEYS)])
    try:
        lora = LoraSettings.model_validate(settings["lora"])
        strategy_settings = StrategySettings.model_validate(settings["strategy"])
    except ValidationError as exc:
        for section, model in (("lora", LoraSettings), ("strategy", StrategySettings)):
            _refuse_unknown([f"{section}.{k}" for k in sorted(set(settings[section]) - set(model.model_fields))])
        raise InvalidMessage(format_validation_error(f"{WHAT}: federation settings", exc)) from None
    except RecursionError:
        raise InvalidMessage(f"{WHAT}: its federation settings nest too deeply") from None
    try:
        strategy = make_strategy(strategy_settings, dim=bundle.vector.size, layout_json=bundle.layout_json)
    except (SecureFedError, ValueError) as exc:
        raise InvalidMessage(f"{WHAT}: its strategy settings are unusable ({exc})") from None
    state = bundle.server_state
    if state is not None and state.shape != (bundle.vector.size,):
        raise InvalidMessage(f"{WHAT}: the strategy's server state has {state.size} values, the adapter "
                             f"{bundle.vector.size}")
    return FederationSettings(lora, strategy, settings)
