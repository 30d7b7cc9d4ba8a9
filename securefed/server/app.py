"""Assemble a running coordinator from a ``ServerConfig``: model layout, strategy, mode, gRPC server.

``ServerApp(config).start()`` binds the port and starts serving; ``run()`` drives the rounds in the
calling thread and returns True when every round completed. Used by ``securefed server``, by the
in-process federation runner and by the tests (which bind port 0).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from securefed import he
from securefed.errors import ConfigError, ModelError, SecureFedError
from securefed.logs import get_logger, log
from securefed.protocol.ending import seal_end
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
from securefed.training.fingerprint import base_fingerprint, has_weights, short
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb
from securefed.transport.diagnose import EXPIRY_WARNING_DAYS, SERVER_FIX, check_own_certificate
from securefed.transport.revocation import CRL_FILE, RevocationWatch
from securefed.transport.service import add_federation_servicer
from securefed.transport.tls import make_server

logger = get_logger("server")

_MODE = {AggregationMode.SECAGG: pb.AGGREGATION_MODE_SECAGG, AggregationMode.CKKS: pb.AGGREGATION_MODE_CKKS,
         AggregationMode.PLAINTEXT: pb.AGGREGATION_MODE_PLAINTEXT}
_STRATEGY = {"fedavg": pb.STRATEGY_FEDAVG, "fedprox": pb.STRATEGY_FEDPROX, "scaffold": pb.STRATEGY_SCAFFOLD,
             "fednova": pb.STRATEGY_FEDNOVA}


def settings_json(config: ServerConfig, fingerprint: str) -> str:
    """Canonical JSON of what every member must apply identically (LoRA, strategy, the base model's
    fingerprint); bound into the global bundle digest."""
    return json.dumps({"lora": config.lora.model_dump(mode="json"), "strategy": config.strategy.model_dump(mode="json"),
                       "base_model": {"fingerprint": fingerprint}}, sort_keys=True, separators=(",", ":"))


def server_fingerprint(config: ServerConfig) -> str:
    """The base checkpoint's fingerprint: streamed from the weights in base_model_dir (cached in the
    state dir), or the operator's pinned ``[model] fingerprint`` when the server holds no weights."""
    d, pinned = config.server.base_model_dir, config.model.fingerprint
    if not has_weights(d):
        if pinned is None:
            raise ConfigError(f"server.base_model_dir {d} holds no weights: copy the checkpoint there, or set "
                              "[model] fingerprint (`securefed model fingerprint DIR` on a machine that has it)")
        return pinned
    log(logger, "fingerprinting the base model", model_dir=str(d))
    try:
        fp = base_fingerprint(d, cache_dir=config.server.state_dir)
    except ModelError as exc:
        raise ConfigError(f"server.base_model_dir: {exc}") from None
    if pinned is not None and pinned != fp:
        raise ConfigError(f"[model] fingerprint {short(pinned)}... does not match the weights in {d} "
                          f"({short(fp)}...): fix the pin or the directory")
    log(logger, "base model fingerprint", fingerprint=fp)
    return fp


def initial_adapter(config: ServerConfig, fingerprint: str):
    """The round-0 adapter from the config alone: the layout of LoRA on the architecture built on
    torch's meta device (no base weights in memory), the values a pure function of the public seed."""
    # The one place the server touches torch/transformers/peft, and only when a federation starts:
    # a restarted coordinator resumes from its checkpoints without them.
    from securefed.training.adapter import initial_vector
    from securefed.training.model import layout_for_config

    try:
        layout = layout_for_config(config.server.base_model_dir, config.lora,
                                   trust_remote_code=config.model.trust_remote_code)
    except ModelError as exc:
        raise ConfigError(f"server.base_model_dir: {exc}") from None
    vec = initial_vector(layout, config.lora.init_seed)
    strategy = make_strategy(config.strategy, dim=layout.total_size, layout_json=layout.to_json())
    state = strategy.initial_server_state()
    return (vec, layout.to_json(), settings_json(config, fingerprint),
            None if state is None else np.asarray(state, np.float32))


def check_credentials(config: ServerConfig) -> tuple[RevocationWatch, tid.ServerCredentials]:
    """The CA, the server's certificate and key, the revocation list: ``CertificateError`` (exit 2, one
    line) for an expired or revoked certificate. Runs first, before the model is read."""
    creds = config.server.credentials_dir
    ca = tid.load_ca_certificate(creds)
    revocations = RevocationWatch(Path(creds) / CRL_FILE, ca)
    server = tid.load_server_credentials(creds)
    days = check_own_certificate(server.certificate_pem, ca, what="the server's certificate", fix=SERVER_FIX,
                                 revocations=revocations.current())
    if days < EXPIRY_WARNING_DAYS:
        log(logger, "the server's certificate expires soon: " + SERVER_FIX, level=logging.WARNING, days_left=days)
    return revocations, server


class ServerApp:
    """One coordinator with its callbacks (plan, driver, strategy) and its gRPC server."""

    def __init__(self, config: ServerConfig, *, address: str | None = None,
                 credentials: tuple[RevocationWatch, tid.ServerCredentials] | None = None) -> None:
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
        self.base_fingerprint = server_fingerprint(config)
        self.coordinator = Coordinator(
            config, initial_adapter=lambda: initial_adapter(config, self.base_fingerprint),
            settings_json=settings_json(config, self.base_fingerprint),
            payload_length=lambda dim: self.strategy(dim).payload_size, build_plan=self.build_plan,
            driver_factory=self.make_driver, apply_update=self.apply, seal_end=self.seal_end,
        )
        self.grpc_server = None
        self.port: int | None = None
        # The CA-signed revocation list in credentials_dir (read at start()): checked at every call and
        # registration, shipped in every plan.
        self.revocations: RevocationWatch | None = None
        self._checked = credentials  # check_credentials(config), when the caller ran it first
        self._credentials: tid.ServerCredentials | None = None  # read at start(): the end is signed with its key
        self.live = LiveStatusWriter(self.coordinator)  # state_dir/live.json, for `securefed status`

    def strategy(self, dim: int) -> Strategy:
        s = self._strategy_cache.get(dim)
        if s is None:
            ckpt = self.coordinator.global_ckpt  # its layout fixes the groups of a heterogeneous payload
            s = make_strategy(self.config.strategy, dim=dim, layout_json=ckpt.layout_json if ckpt else None)
            if ckpt is not None or not s.heterogeneous:
                self._strategy_cache[dim] = s
        return s

    # --- coordinator callbacks --------------------------------------------------------------------
    def build_plan(self, ctx: AttemptContext) -> pb.RoundPlan:
        cfg = self.config
        st = cfg.strategy
        plan = pb.RoundPlan(
            round=ctx.attempt, global_adapter_sha256=ctx.global_digest,
            mode=_MODE[cfg.federation.mode],
            strategy=pb.StrategyParams(strategy=_STRATEGY[st.kind.value], proximal_mu=st.mu,
                                       server_learning_rate=st.server_lr),
            cohort=[pb.CohortMember(client_id=c, identity_public_key=ctx.identity_keys[c],
                                    certificate=ctx.certificates.get(c, b"")) for c in sorted(ctx.cohort)],
            vector_length=ctx.payload_length, stage_timeout_ms=int(cfg.deadlines.training_s * 1000),
            base_model_fingerprint=bytes.fromhex(self.base_fingerprint),
            revocation_list=self.revocations.der() if self.revocations else b"", federation_id=cfg.server.federation_id,
            federation_round=ctx.round, expected_library_versions=cfg.expected_library_versions(),
            require_library_versions=cfg.federation.library_versions == "require",
        )
        bound = self.strategy(ctx.global_ckpt.vector.size).payload_bound()
        if cfg.federation.mode is AggregationMode.SECAGG:
            n = len(ctx.cohort)
            p = cfg.secagg_params(n)
            k = p.effective_degree(n)
            plan.secagg.CopyFrom(pb.SecAggParams(threshold=p.threshold, neighbours=0 if k == n - 1 else k,
                                                 ring_bits=p.ring_bits, frac_bits=p.frac_bits, clip=float(bound)))
        elif cfg.federation.mode is AggregationMode.PLAINTEXT:
            plan.secagg.CopyFrom(pb.SecAggParams(threshold=cfg.federation.threshold, ring_bits=cfg.ring_bits(),
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

    def seal_end(self, done: pb.Done) -> pb.Done:
        """The end of the federation, signed with the server's TLS key (the only end members stop on)."""
        try:
            creds = self._credentials or tid.load_server_credentials(self.config.server.credentials_dir)
            return seal_end(done, creds.certificate_pem, creds.private_key_pem)
        except (SecureFedError, OSError, ValueError) as exc:
            log(logger, "cannot sign the end of the federation: members will wait for a server that does not come "
                "back; stop them by hand", level=logging.ERROR, error=str(exc))
            return done

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> int:
        self.revocations, self._credentials = self._checked or check_credentials(self.config)
        self.coordinator.recover()
        workers = max(16, 4 * self.config.federation.cohort_size + 8)
        bound = make_server(self.address, self.config.server.credentials_dir, max_workers=workers)
        add_federation_servicer(bound.server, FederationService(self.coordinator, self.config.server.federation_id,
                                                                revocations=self.revocations))
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
