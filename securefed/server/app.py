"""Assemble a running coordinator from a ``ServerConfig``: model layout, strategy, mode, gRPC server.

``ServerApp(config).start()`` binds the port and starts serving; ``run()`` drives the rounds in the
calling thread and returns True when every round completed. Used by ``securefed server``, by the
in-process federation runner and by the tests (which bind port 0).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from securefed import he
from securefed.errors import ConfigError
from securefed.logs import get_logger, log
from securefed.protocol.plan import seal_plan
from securefed.server.attempt import AttemptContext, RoundOutcome
from securefed.server.ckks_driver import CkksDriver
from securefed.server.config import AggregationMode, ServerConfig
from securefed.server.coordinator import Coordinator
from securefed.server.driver import RoundDriver
from securefed.server.livestatus import LiveStatusWriter
from securefed.server.plaintext_driver import PlaintextDriver
from securefed.server.secagg_driver import SecAggDriver
from securefed.server.service import FederationService
from securefed.strategies import Strategy, check_secure_aggregation, make_strategy
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.service import add_federation_servicer
from securefed.transport.tls import make_server

logger = get_logger("server")

_MODE = {AggregationMode.SECAGG: pb.AGGREGATION_MODE_SECAGG, AggregationMode.CKKS: pb.AGGREGATION_MODE_CKKS,
         AggregationMode.PLAINTEXT: pb.AGGREGATION_MODE_PLAINTEXT}
_STRATEGY = {"fedavg": pb.STRATEGY_FEDAVG, "fedprox": pb.STRATEGY_FEDPROX, "scaffold": pb.STRATEGY_SCAFFOLD,
             "fednova": pb.STRATEGY_FEDNOVA}


def settings_json(config: ServerConfig) -> str:
    """Canonical JSON of what every member must apply identically; bound into the global bundle digest."""
    return json.dumps({"lora": config.lora.model_dump(mode="json"), "strategy": config.strategy.model_dump(mode="json")},
                      sort_keys=True, separators=(",", ":"))


def initial_adapter(config: ServerConfig):
    """The round-0 adapter: LoRA attached to the base model with the (public) init seed."""
    # The one place the server touches the base model (torch, transformers, peft), and only when a
    # federation starts: a restarted coordinator resumes from its checkpoints without them.
    from securefed.training.adapter import adapter_to_vector
    from securefed.training.model import load_model

    loaded = load_model(config.server.base_model_dir, lora=config.lora)
    vec, layout = adapter_to_vector(loaded.model)
    strategy = make_strategy(config.strategy, dim=layout.total_size)
    state = strategy.initial_server_state()
    return vec, layout.to_json(), settings_json(config), None if state is None else np.asarray(state, np.float32)


class ServerApp:
    """One coordinator with its callbacks (plan, driver, strategy) and its gRPC server."""

    def __init__(self, config: ServerConfig, *, address: str | None = None) -> None:
        self.config = config
        self.address = address or config.server.address
        self._strategy_cache: dict[int, Strategy] = {}
        fed = config.federation
        check_secure_aggregation(make_strategy(config.strategy, dim=1), fed.mode is not AggregationMode.PLAINTEXT)
        self.server_ctx: he.ServerContext | None = None
        self.ckks_public_sha = b""
        if fed.mode is AggregationMode.CKKS:
            path = config.server.ckks_public_context
            try:
                raw = Path(path).read_bytes()  # type: ignore[arg-type]
            except OSError as exc:
                raise ConfigError(f"server.ckks_public_context: cannot read {path} ({exc.strerror})") from None
            self.server_ctx = he.ServerContext.from_public_bytes(raw, fed.ckks_params)
            self.ckks_public_sha = hashlib.sha256(raw).digest()
        self.coordinator = Coordinator(
            config, initial_adapter=lambda: initial_adapter(config), settings_json=settings_json(config),
            payload_length=lambda dim: self.strategy(dim).payload_size, build_plan=self.build_plan,
            driver_factory=self.make_driver, apply_update=self.apply,
        )
        self.grpc_server = None
        self.port: int | None = None
        self.live = LiveStatusWriter(self.coordinator)  # state_dir/live.json, for `securefed status`

    def strategy(self, dim: int) -> Strategy:
        s = self._strategy_cache.get(dim)
        if s is None:
            s = self._strategy_cache[dim] = make_strategy(self.config.strategy, dim=dim)
        return s

    # --- coordinator callbacks --------------------------------------------------------------------
    def build_plan(self, ctx: AttemptContext) -> pb.RoundPlan:
        cfg = self.config
        st = cfg.strategy
        plan = pb.RoundPlan(
            round=ctx.attempt, adapter_round=ctx.round, global_adapter_sha256=ctx.global_digest,
            mode=_MODE[cfg.federation.mode],
            strategy=pb.StrategyParams(strategy=_STRATEGY[st.kind.value], proximal_mu=st.mu,
                                       server_learning_rate=st.server_lr),
            cohort=[pb.CohortMember(client_id=c, identity_public_key=ctx.identity_keys[c],
                                    certificate=ctx.certificates.get(c, b"")) for c in sorted(ctx.cohort)],
            vector_length=ctx.payload_length, stage_timeout_ms=int(cfg.deadlines.training_s * 1000),
        )
        bound = self.strategy(ctx.global_ckpt.vector.size).payload_bound()
        if cfg.federation.mode is AggregationMode.SECAGG:
            n = len(ctx.cohort)
            p = cfg.secagg_params(n)
            k = p.effective_degree(n)
            plan.secagg.CopyFrom(pb.SecAggParams(threshold=p.threshold, neighbours=0 if k == n - 1 else k,
                                                 ring_bits=p.ring_bits, frac_bits=p.frac_bits, clip=float(bound)))
        elif cfg.federation.mode is AggregationMode.PLAINTEXT:
            plan.secagg.CopyFrom(pb.SecAggParams(threshold=cfg.federation.threshold, ring_bits=cfg.federation.ring_bits,
                                                 frac_bits=cfg.federation.frac_bits, clip=float(bound)))
        else:
            assert self.server_ctx is not None
            # The threshold also binds CKKS: members decrypt only a sum of >= t signed contributions.
            plan.secagg.CopyFrom(pb.SecAggParams(threshold=cfg.federation.threshold, clip=float(bound)))
            p = self.server_ctx.params
            plan.ckks.CopyFrom(pb.CkksParams(poly_modulus_degree=p.poly_modulus_degree,
                                             coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
                                             global_scale_bits=p.global_scale_bits,
                                             public_context_sha256=self.ckks_public_sha))
        return seal_plan(plan)

    def make_driver(self, ctx: AttemptContext) -> RoundDriver:
        mode = self.config.federation.mode
        if mode is AggregationMode.SECAGG:
            return SecAggDriver(ctx)
        if mode is AggregationMode.CKKS:
            assert self.server_ctx is not None
            return CkksDriver(ctx, self.server_ctx)
        return PlaintextDriver(ctx)

    def apply(self, global_vec: np.ndarray, sums: np.ndarray, ctx: AttemptContext, outcome: RoundOutcome):
        strategy = self.strategy(global_vec.size)
        upd = strategy.server_apply(global_vec, sums, len(outcome.contributors), ctx.global_ckpt.server_state)
        state = upd.server_state
        return upd.global_vec, None if state is None else np.asarray(state, np.float32)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> int:
        self.coordinator.recover()
        workers = max(16, 4 * self.config.federation.cohort_size + 8)
        bound = make_server(self.address, self.config.server.credentials_dir, max_workers=workers)
        add_federation_servicer(bound.server, FederationService(self.coordinator, self.config.server.federation_id))
        bound.server.start()
        self.grpc_server, self.port = bound.server, bound.port
        self.live.start()
        log(logger, "server listening", address=self.address, port=bound.port, mode=self.config.federation.mode.value,
            rounds=self.config.federation.rounds, resume_from_round=self.coordinator.global_ckpt.round
            if self.coordinator.global_ckpt else 0)
        return bound.port

    def run(self) -> bool:
        return self.coordinator.run()

    def stop(self, grace: float = 1.0) -> None:
        self.coordinator.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
            self.grpc_server = None
            self.live.stop()
        self.coordinator.roundlog.close()
