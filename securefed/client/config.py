"""``client.toml``: what a member organisation sets. The privacy budget here is enforced by the
client itself; nothing the server sends can raise it.

Example (see clients/client.toml for the annotated version)::

    [client]
    name = "hospital-a"                 # the name in this member's certificate
    server = "fl.example.org:50051"
    credentials_dir = "pki"             # ca.pem, clients/hospital-a.{pem,key,identity.key}
    state_dir = "state"                 # ledger, received adapters, strategy state
    base_model_dir = "models/base"

    [data]
    path = "data/train.jsonl"           # chat {"messages": [...]}, Alpaca, instruction/response or {"text": ...}
    long_records = "truncate"           # or "refuse": a record longer than training.max_seq_len

    [privacy]                           # securefed.privacy.PrivacyBudget
    target_epsilon = 8.0
    delta = 1e-5

    [training]                          # securefed.training.LocalTrainingSettings
    learning_rate = 0.05
    batch_size = 8
    epochs = 1.0

    [model]                             # securefed.training.ModelSettings: this member's hardware
    device = "auto"                     # cuda, then mps, then cpu
    dtype = "auto"                      # the checkpoint's, where the device computes in it
    max_memory_gb = 8                   # picks micro-batches / checkpointing (/ quantization = "auto")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from securefed.config import StrictModel, check_address, load_toml
from securefed.data.settings import DataSettings
from securefed.errors import ConfigError
from securefed.heterogeneous.config import CapacitySettings
from securefed.privacy.budget import PrivacyBudget
from securefed.secagg.params import DEFAULT_MAX_COLLUDERS
from securefed.training.config import LocalTrainingSettings, LoraSettings, ModelSettings


class ClientSection(StrictModel):
    name: str = Field(description="this member's client name: the CN of its certificate")
    server: str = Field(description="host:port of the federation server")
    server_name: str | None = Field(None, description="TLS name to expect when dialling an address not in the cert")
    credentials_dir: Path = Field(description="ca.pem and clients/NAME.{pem,key,identity.key}")
    state_dir: Path = Field(description="ledger, received global adapters and strategy state")
    ledger_dir: Path | None = Field(
        None, description="where this member keeps one privacy ledger per dataset, shared by every federation its "
        "data joins (the budget is per dataset); default ~/.local/share/securefed/ledgers"
    )
    ledger_path: Path | None = Field(
        None, description="one privacy ledger file instead of ledger_dir (it is bound to one dataset all the same)"
    )
    base_model_dir: Path = Field(description="local HF model directory (the federation's base model)")
    ckks_secret_context: Path | None = Field(None, description="federation CKKS secret context (mode ckks only)")
    planned_rounds: int = Field(
        3, ge=1, le=100_000,
        description="rounds this member expects to join: the noise multiplier is calibrated so that all of "
        "them fit in the budget (when training.noise_multiplier is not set)",
    )
    after_planned_rounds: Literal["stop", "continue"] = Field(
        "stop", description="calibrated noise only: 'stop' declines every plan once planned_rounds updates were "
        "released (the budget was planned for them); 'continue' recalibrates for one more round at a time "
        "on what is left, i.e. rounds of ever more noise (logged as a warning each time)",
    )
    eval_heldout: bool = Field(False, description="demo only: report held-out perplexity of each new global adapter")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for local training; default: every core, or a quarter of them "
        "when the server is on this machine (a one-machine trial: the server and the other members share the "
        "cores); OMP_NUM_THREADS, when set, wins"
    )
    min_cohort_size: int = Field(
        3, ge=3, description="decline plans listing fewer members (the secure-aggregation threshold then bounds "
        "how far dropouts can shrink the sum)"
    )
    min_threshold: int = Field(2, ge=2, description="decline plans whose aggregation threshold t is lower")
    max_colluding_members: int = Field(
        DEFAULT_MAX_COLLUDERS, ge=0, le=10_000,
        description="secure aggregation: how many other members this member assumes may collude with the server; "
        "it declines any plan whose threshold would let that many rebuild both secrets of one member "
        "(2t >= m + c + 1 for m share holders), whatever the server claims. 0 trusts every other member",
    )
    sparse_graph_needs_all_keys: bool = Field(
        True, description="SecAgg+ (sparse graph) only: leave a round unless every listed member's round keys "
        "are in the key broadcast, so the server cannot pick which clients to drop to steer the neighbour graph"
    )
    sparse_graph_max_retries: int = Field(
        2, ge=1, le=100, description="SecAgg+ only: sparse-graph sessions that end before this member's release it "
        "joins per sparse_graph_window_s, or since the last session it finished itself (counted on disk, across "
        "restarts); then it declines more sparse plans (bounds graph grinding by retries; an announced round does "
        "not reset it)"
    )
    sparse_graph_window_s: float = Field(
        3600.0, gt=0, description="SecAgg+ only: the wall-clock window (this member's own clock) over which "
        "sparse_graph_max_retries counts"
    )
    allow_plaintext_for_debugging: bool = Field(
        False, description="join rounds in which the server sees this member's update in clear (debugging only); "
        "without it such plans are declined, whatever the server says"
    )

    @field_validator("server")
    @classmethod
    def _server_has_port(cls, v: str) -> str:
        # Port 0 passes here only for provisioning placeholders; the daemon refuses to dial it.
        return check_address(v, allow_port_zero=True)


class DataSection(DataSettings):
    """Where the member's records are, and (inherited) what to do with over-long ones and text packing."""

    path: Path | None = Field(None, description="JSONL training data")
    demo_client: int | None = Field(None, ge=0, description="use the built-in pydoc_data split: this client's index")
    demo_clients: int | None = Field(None, ge=1, description="built-in split: number of clients")

    @model_validator(mode="after")
    def _one_source(self) -> "DataSection":
        demo = self.demo_client is not None or self.demo_clients is not None
        if (self.path is None) == (not demo):
            raise ValueError("set either data.path (JSONL) or data.demo_client + data.demo_clients")
        if demo and (self.demo_client is None or self.demo_clients is None or self.demo_client >= self.demo_clients):
            raise ValueError("data.demo_client must be set with data.demo_clients, and be < demo_clients")
        return self


class ConnectionSection(StrictModel):
    poll_wait_s: float = Field(10.0, gt=0, le=30, description="long-poll wait per request")
    backoff_initial_s: float = Field(0.5, gt=0, description="first reconnect delay; doubles up to backoff_max_s")
    backoff_max_s: float = Field(15.0, gt=0)
    give_up_after_s: float | None = Field(None, gt=0, description="stop after this long without the server (None: never)")
    rpc_timeout_s: float = Field(120.0, gt=0, description="deadline of one request (one stream of an upload or "
                                 "download; an interrupted transfer resumes where it stopped)")
    transfer_give_up_s: float = Field(300.0, gt=0, description="how long one upload or download keeps resuming "
                                      "after dropped connections before this member gives it up")
    heartbeat_s: float = Field(
        5.0, gt=0, le=300, description="heartbeat interval while working on an attempt, unless the server asks "
        "for another one at registration")


class ClientConfig(StrictModel):
    client: ClientSection
    data: DataSection
    privacy: PrivacyBudget
    training: LocalTrainingSettings = LocalTrainingSettings()
    model: ModelSettings = Field(
        ModelSettings(), description="how this member loads the base model on its hardware (dtype, device, "
        "quantization, memory cap); nothing here changes the federation's adapter"
    )
    lora: LoraSettings | None = Field(
        None, description="optional: the LoRA settings this member expects; a federation using others is refused"
    )
    connection: ConnectionSection = ConnectionSection()
    capacity: CapacitySettings = Field(
        CapacitySettings(), description="how much of the federation's adapter this member trains (top layers, "
        "rank); the rest keeps the global values and the upload keeps the whole layout"
    )

    @property
    def ledger_path(self) -> Path | None:
        """The one ledger file, when the config names one (else the ledger lives in ledger_dir)."""
        return self.client.ledger_path

    def resolve_paths(self, base: Path) -> "ClientConfig":
        c = self.client
        upd = {}
        for k in ("credentials_dir", "state_dir", "base_model_dir", "ledger_dir", "ledger_path", "ckks_secret_context"):
            v = getattr(c, k)
            if v is not None and not v.is_absolute():
                upd[k] = base / v
        d = self.data
        dupd = {"path": base / d.path} if d.path is not None and not d.path.is_absolute() else {}
        return self.model_copy(update={"client": c.model_copy(update=upd), "data": d.model_copy(update=dupd)})


def load_client_config(path: str | Path) -> ClientConfig:
    path = Path(path)
    cfg = load_toml(ClientConfig, path)
    if cfg.training.noise_multiplier == 0:
        raise ConfigError(f"{path}: training.noise_multiplier: 0 means no differential privacy; remove it to calibrate")
    return cfg.resolve_paths(path.resolve().parent)
