"""``server.toml``: what the federation operator sets, validated, with the setups it refuses.

Example (see clients/server.toml for the annotated version)::

    [server]
    address = "127.0.0.1:50051"
    credentials_dir = "pki/server"      # ca.pem, server.pem, server.key from `securefed keys`
    state_dir = "state"                 # round log (SQLite) and adapter checkpoints
    base_model_dir = "models/tiny"

    [federation]
    rounds = 3
    cohort_size = 3
    min_clients = 3
    threshold = 3                       # 2t >= m + c + 1 (m share holders, c colluders)
    max_colluding_members = 1           # members that may collude with this server
    neighbour_degree = 0                # 0 = complete graph (plain Bonawitz)
    mode = "secagg"                     # secagg | ckks | plaintext

    [strategy]                          # securefed.strategies.StrategySettings
    kind = "fedavg"
    max_samples = 1000

    [lora]                              # securefed.training.LoraSettings: the adapter every member trains
    rank = 4
    target_modules = "auto"             # the attention q/v of the architecture; or "all-linear", or a list
    freeze_a = false                    # FFA-LoRA: train and aggregate only B

    [model]                             # how the server reads the base model (it never loads its weights)
    trust_remote_code = false

    [deadlines]
    training_s = 120
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from securefed import versions
from securefed.config import StrictModel, check_address, format_validation_error, load_toml
from securefed.crypto.fixedpoint import FixedPointParams
from securefed.errors import ConfigError, InsecureParameters
from securefed.secagg.params import DEFAULT_MAX_COLLUDERS, SecAggParams
from securefed.strategies import make_strategy
from securefed.strategies.config import StrategySettings
from securefed.training.config import LoraSettings


class AggregationMode(str, enum.Enum):
    SECAGG = "secagg"
    CKKS = "ckks"
    PLAINTEXT = "plaintext"


class ServerSection(StrictModel):
    address: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    credentials_dir: Path = Field(description="directory with ca.pem, server.pem, server.key")
    state_dir: Path = Field(description="round log (SQLite) and, by default, the global adapter checkpoints")
    checkpoint_dir: Path | None = Field(None, description="global adapter checkpoints (default: state_dir/checkpoints)")
    base_model_dir: Path = Field(description="local HF model directory: its config.json fixes the adapter layout, its "
                                 "weights the base-model fingerprint (streamed, never loaded into memory)")
    ckks_public_context: Path | None = Field(
        None, description="mode = 'ckks': the federation's public CKKS context (parameters only, no key)"
    )
    federation_id: str = Field("securefed", min_length=1, max_length=64, description="name reported to clients")

    @field_validator("address")
    @classmethod
    def _address_has_port(cls, v: str) -> str:
        return check_address(v, allow_port_zero=True)  # port 0: any free port (see --port-file)


class FederationSection(StrictModel):
    rounds: int = Field(3, gt=0, le=100_000, description="completed rounds to run")
    max_attempts: int | None = Field(
        None, gt=0, description="round attempts before giving up (default: 3 x rounds); aborted rounds count"
    )
    cohort_size: int = Field(3, gt=0, le=10_000, description="clients selected per round")
    min_clients: int = Field(3, gt=0, description="clients that must be connected before a round starts")
    threshold: int = Field(3, gt=0, description="Shamir threshold t: survivors needed to unmask; with m share "
                           "holders per member and max_colluding_members c, 2t >= m + c + 1 is required")
    max_colluding_members: int = Field(
        DEFAULT_MAX_COLLUDERS, ge=0, le=10_000,
        description="secagg: how many members may collude with the server; a threshold that lets that many "
        "rebuild both secrets of one member is refused (each member checks the same rule for its own number)",
    )
    neighbour_degree: int = Field(0, ge=0, description="SecAgg+ graph degree k (0 = complete graph)")
    mode: AggregationMode = AggregationMode.SECAGG
    allow_plaintext_for_debugging: bool = Field(
        False, description="plaintext shows each update to the server; refused unless this is true"
    )
    frac_bits: int = Field(
        24, gt=0, le=48,
        description="fixed-point fractional bits (precision 2^-frac_bits; 2^-24 ~ 6e-8 is far below DP noise)",
    )
    ring_bits: int | None = Field(
        None,
        description="fixed-point ring Z_(2^ring_bits): 32 or 64; default: the smallest ring in which a sum of "
        "cohort_size clipped payloads at frac_bits cannot overflow (32 for the shipped configs)",
    )
    ckks_params: str = Field("ckks-n4096-q56-s40", description="CKKS parameter set name (securefed.he), mode = 'ckks' only")
    on_budget_exhausted: Literal["stop", "wait"] = Field(
        "stop", description="when too few members are left whose privacy budget allows a round: 'stop' ends the "
        "federation ('privacy budget exhausted for all members'); 'wait' asks them again after budget_retry_s, "
        "doubling up to budget_retry_max_s (a member restarted with a larger budget is asked at once)",
    )
    budget_retry_s: float = Field(60.0, gt=0, description="on_budget_exhausted = 'wait': first wait before asking again")
    budget_retry_max_s: float = Field(3600.0, gt=0, description="on_budget_exhausted = 'wait': longest wait")
    library_versions: Literal["warn", "require"] = Field(
        "warn", description="the plan states the versions of torch, transformers, peft, opacus, bitsandbytes and "
        "tenseal the federation expects (this server's, or expected_library_versions); a member running another "
        "major.minor of any of them logs a warning and trains ('warn'), or declines every plan ('require')",
    )
    expected_library_versions: dict[str, str] = Field(
        default_factory=dict, description="override the versions the plan states, e.g. {torch = \"2.13.0\"} "
        "(default: the versions this server runs)",
    )

    @model_validator(mode="after")
    def _check(self) -> "FederationSection":
        if self.ring_bits is not None and self.ring_bits not in (32, 64):
            raise ValueError("ring_bits must be 32 or 64 (or left out: the smallest safe ring)")
        unknown = sorted(set(self.expected_library_versions) - set(versions.NUMERICS_LIBRARIES))
        if unknown:
            raise ValueError(f"expected_library_versions: {unknown} is not one of {list(versions.NUMERICS_LIBRARIES)}")
        if self.min_clients > self.cohort_size:
            raise ValueError(f"min_clients ({self.min_clients}) must be <= cohort_size ({self.cohort_size})")
        return self


class ServerModelSection(StrictModel):
    """What the server needs of the base model: its architecture (config.json) and its fingerprint."""

    trust_remote_code: bool = Field(
        False, description="build the layout of a model that ships its own code (auto_map); off: refused")
    fingerprint: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="the base checkpoint's fingerprint (`securefed model fingerprint DIR`). Required when "
        "base_model_dir holds only config.json (no weights on the server); when the weights are there it must "
        "match them")


class DeadlinesSection(StrictModel):
    """Seconds per stage. A client silent past its stage deadline is a dropout for the round."""

    join_s: float = Field(300.0, gt=0, description="wait for min_clients to connect")
    training_s: float = Field(300.0, gt=0, description="plan -> round keys (includes local training)")
    training_max_s: float = Field(
        3600.0, gt=0, description="the plan stage waits past training_s, up to this long, for cohort members "
        "whose heartbeats report training progress, as long as their step rate projects an answer within it "
        "(members that report none are dropouts at training_s)")
    share_keys_s: float = Field(30.0, gt=0)
    masked_input_s: float = Field(60.0, gt=0)
    unmask_s: float = Field(30.0, gt=0)
    decrypt_s: float = Field(60.0, gt=0, description="CKKS: clients decrypt the aggregate")
    poll_s: float = Field(5.0, gt=0, le=60, description="long-poll wait per client request")
    heartbeat_s: float = Field(5.0, gt=0, le=300, description="interval members send heartbeats at while they work")
    missed_heartbeats: int = Field(
        3, ge=1, le=1000, description="a cohort member silent for this many heartbeat intervals is a dropout for "
        "the attempt (noticed in seconds, not at the stage deadline)")

    @property
    def silence_s(self) -> float:
        """How long a cohort member may be silent before it is dropped from the attempt."""
        return self.heartbeat_s * self.missed_heartbeats


class ServerConfig(StrictModel):
    server: ServerSection
    federation: FederationSection = FederationSection()
    strategy: StrategySettings = StrategySettings()
    lora: LoraSettings = LoraSettings()
    model: ServerModelSection = ServerModelSection()
    deadlines: DeadlinesSection = DeadlinesSection()

    def expected_library_versions(self) -> dict[str, str]:
        """The versions the plan states: this server's own (those it has installed), overridden by config."""
        mine = {k: v for k, v in versions.installed().items() if v != versions.ABSENT}
        return {**mine, **self.federation.expected_library_versions}

    @property
    def checkpoint_dir(self) -> Path:
        return self.server.checkpoint_dir or (self.server.state_dir / "checkpoints")

    def check_safety(self, source: str = "<config>") -> None:
        """Refuse setups that silently weaken the guarantees (InsecureParameters naming the key)."""
        fed = self.federation
        try:
            self.payload_bound()  # the strategy's own checks, named by file (the secagg clip comes from it)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if fed.mode is AggregationMode.PLAINTEXT and not fed.allow_plaintext_for_debugging:
            raise InsecureParameters(
                f"{source}: federation.mode: 'plaintext' shows every update to the server; use 'secagg' "
                "or 'ckks', or set federation.allow_plaintext_for_debugging = true (debugging only)"
            )
        if fed.mode is AggregationMode.CKKS and self.server.ckks_public_context is None:
            raise InsecureParameters(f"{source}: server.ckks_public_context: required when federation.mode = 'ckks'")
        if fed.threshold < 2:
            raise InsecureParameters(f"{source}: federation.threshold must be >= 2 (a 'sum' of one client is its update)")
        if fed.mode is AggregationMode.CKKS and 2 * fed.threshold <= fed.cohort_size:
            # Decryptors confirm one contributor set; only a strict majority stops a server from getting
            # two different sets confirmed and differencing the two sums.
            raise InsecureParameters(
                f"{source}: federation.threshold ({fed.threshold}) must be a strict majority of cohort_size "
                f"({fed.cohort_size}) in mode 'ckks': set threshold >= {fed.cohort_size // 2 + 1}"
            )
        if fed.mode is AggregationMode.SECAGG:
            if fed.threshold > fed.cohort_size:
                raise InsecureParameters(
                    f"{source}: federation.threshold ({fed.threshold}) must be <= cohort_size ({fed.cohort_size})"
                )
            if fed.min_clients < fed.threshold:
                raise InsecureParameters(
                    f"{source}: federation.min_clients ({fed.min_clients}) must be >= threshold ({fed.threshold})"
                )
            try:
                self.secagg_params(fed.cohort_size).check_cohort(fed.cohort_size,
                                                                 max_colluders=fed.max_colluding_members)
            except InsecureParameters as exc:
                raise InsecureParameters(f"{source}: federation: {exc}") from None
            except ValidationError as exc:  # a ValueError too: keep it to one line, naming the key
                raise InsecureParameters(format_validation_error(f"{source}: federation", exc)) from None
            except ValueError as exc:
                raise InsecureParameters(f"{source}: federation: {exc}") from None

    def payload_bound(self) -> float:
        """Max |element| of one client's payload under the configured strategy (the fixed-point clip)."""
        return make_strategy(self.strategy, dim=1).payload_bound()

    def ring_bits(self) -> int:
        """``federation.ring_bits``, or by default the smallest ring (32, else 64) in which a sum of
        ``cohort_size`` payloads clipped to ``payload_bound()`` at ``frac_bits`` cannot overflow. Sized
        by the configured cohort, not a round's, so every round of the federation uses one ring;
        a 32-bit ring halves every upload. Neither fitting: ``check_safety`` refuses the config."""
        fed = self.federation
        if fed.ring_bits is not None:
            return fed.ring_bits
        for bits in (32, 64):
            try:
                FixedPointParams(clip=self.payload_bound(), frac_bits=fed.frac_bits, ring_bits=bits).check_capacity(
                    fed.cohort_size)
            except InsecureParameters:
                continue
            return bits
        return 64  # check_capacity then refuses it with a message naming what to lower

    def secagg_params(self, n: int) -> SecAggParams:
        """The secure-aggregation parameters for a cohort of ``n`` (degree 0 or >= n - 1: complete graph)."""
        fed = self.federation
        k = fed.neighbour_degree or None
        return SecAggParams(threshold=fed.threshold, neighbour_degree=k if k is None or k < n - 1 else None,
                            ring_bits=self.ring_bits(), frac_bits=fed.frac_bits, clip=self.payload_bound())

    @property
    def attempts_limit(self) -> int:
        return self.federation.max_attempts or 3 * self.federation.rounds

    def resolve_paths(self, base: Path) -> "ServerConfig":
        """Paths in the file are relative to the file's directory."""
        s = self.server
        upd = {
            k: (base / getattr(s, k)) if not getattr(s, k).is_absolute() else getattr(s, k)
            for k in ("credentials_dir", "state_dir", "base_model_dir")
        }
        if s.checkpoint_dir is not None and not s.checkpoint_dir.is_absolute():
            upd["checkpoint_dir"] = base / s.checkpoint_dir
        if s.ckks_public_context is not None and not s.ckks_public_context.is_absolute():
            upd["ckks_public_context"] = base / s.ckks_public_context
        return self.model_copy(update={"server": s.model_copy(update=upd)})


def load_server_config(path: str | Path) -> ServerConfig:
    path = Path(path)
    cfg = load_toml(ServerConfig, path)
    cfg.check_safety(str(path))
    return cfg.resolve_paths(path.resolve().parent)
