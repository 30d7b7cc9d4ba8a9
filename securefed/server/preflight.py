"""``securefed server --config F --check``: everything about the coordinator that can be validated offline.

In order: the config file with the setups it refuses (threshold, plaintext, CKKS majority, ...);
the bind address; credentials (CA, server certificate and key, cross-checked, and their validity
dates); the strategy under the aggregation mode; the base model directory (a config and weights);
the CKKS public context in mode ckks (parsed, and free of a secret key); the state directory, and a
federation already in it (rounds done, and whether its settings are still the config's); the
deadlines. Nothing is bound, written or loaded into memory beyond what a check needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from securefed import he
from securefed.errors import ConfigError, SecureFedError
from securefed.preflight import Checks, certificate_validity, writable_dir
from securefed.server.app import settings_json
from securefed.server.checkpoint import CheckpointStore
from securefed.server.config import AggregationMode, ServerConfig, load_server_config
from securefed.server.roundlog import AttemptStatus, RoundLog
from securefed.strategies import check_secure_aggregation, make_strategy
from securefed.transport import identity as tid

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


def check_server(config_path: str | Path) -> Checks:
    checks = Checks()
    cfg: ServerConfig | None = checks.run("config", lambda: load_server_config(config_path))  # type: ignore[assignment]
    if cfg is None:
        return checks
    fed, s = cfg.federation, cfg.server
    checks.ok("config", f"{config_path}: {fed.rounds} rounds, mode {fed.mode.value}, cohort {fed.cohort_size}, "
              f"threshold {fed.threshold}")
    if s.address.endswith(":0"):
        checks.warn("address", f"{s.address}: binds any free port (pass --port-file to learn which)")
    else:
        checks.ok("address", f"binds {s.address}")
    creds = checks.run("credentials", lambda: tid.load_server_credentials(s.credentials_dir))
    if creds is not None:
        checks.ok("credentials", f"{s.credentials_dir}: CA, server certificate and key match")
        certificate_validity(checks, "federation CA certificate", creds.ca_pem)
        certificate_validity(checks, "server certificate", creds.certificate_pem)
    before = len(checks.items)
    checks.run("strategy", lambda: check_secure_aggregation(make_strategy(cfg.strategy, dim=1),
                                                            fed.mode is not AggregationMode.PLAINTEXT))
    if len(checks.items) == before:
        checks.ok("strategy", f"{cfg.strategy.kind.value} runs under mode {fed.mode.value}")
    _model_dir(checks, s.base_model_dir)
    if fed.mode is AggregationMode.CKKS:
        checks.run("ckks public context", lambda: _public_context(checks, cfg))
    writable_dir(checks, "state_dir", s.state_dir)
    checks.run("federation state", lambda: _state(checks, cfg))
    d = cfg.deadlines
    if d.silence_s >= d.training_s:
        checks.warn("deadlines", f"heartbeat_s x missed_heartbeats = {d.silence_s:g} s >= training_s = {d.training_s:g} s: "
                    "a dead member is only noticed at the stage deadline")
    else:
        checks.ok("deadlines", f"a silent member is dropped after {d.silence_s:g} s (training_s {d.training_s:g} s)")
    return checks


def _model_dir(checks: Checks, model_dir: Path) -> None:
    cfg_file = model_dir / "config.json"
    if not model_dir.is_dir():
        checks.fail("base model", f"{model_dir}: no such directory (server.base_model_dir)")
        return
    try:
        arch = json.loads(cfg_file.read_text()).get("model_type", "?")
    except (OSError, ValueError, AttributeError):
        checks.fail("base model", f"{cfg_file}: missing or not JSON (save the model with save_pretrained)")
        return
    if not any(next(model_dir.glob(p), None) for p in _WEIGHTS):
        checks.fail("base model", f"{model_dir}: no *.safetensors or pytorch_model*.bin weights")
        return
    checks.ok("base model", f"{model_dir} ({arch})")


def _public_context(checks: Checks, cfg: ServerConfig) -> None:
    path = cfg.server.ckks_public_context
    assert path is not None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"server.ckks_public_context: cannot read {path} ({exc.strerror})") from None
    he.ServerContext.from_public_bytes(raw, cfg.federation.ckks_params)  # refuses a context with a secret key
    checks.ok("ckks public context", f"{path}: {cfg.federation.ckks_params}, no secret key")


def _state(checks: Checks, cfg: ServerConfig) -> None:
    path = cfg.server.state_dir / "rounds.sqlite"
    if not path.exists():
        checks.ok("federation state", "none yet: a new federation starts from the base model")
        return
    log = RoundLog(path, readonly=True)
    try:
        last, done = log.last_completed(), log.completed_rounds()
        running = [a.attempt for a in log.attempts(limit=5) if a.status is AttemptStatus.RUNNING]
    finally:
        log.close()
    note = f"; attempt {running[0]} was running: it is abandoned at start-up" if running else ""
    if last is None:
        checks.ok("federation state", f"{path}: no round completed yet{note}")
        return
    try:
        ckpt = CheckpointStore(cfg.checkpoint_dir).load(last.round, expected_digest=last.result_hash)
    except SecureFedError as exc:
        checks.fail("federation state", f"the checkpoint of round {last.round} does not load: {exc}")
        return
    if ckpt.settings_json != settings_json(cfg):
        checks.fail("federation state", f"{cfg.server.state_dir} holds a federation started with other [lora]/[strategy] "
                    "settings: restore them, or use an empty state_dir for a new federation")
        return
    checks.ok("federation state", f"resumes after round {last.round} ({done} of {cfg.federation.rounds} done){note}")
