"""The client daemon: a pull loop over the Federation service, one ``RoundSession`` per plan.

Per plan, in this order (each step can end the client's part in the round):

1. check the plan (digest, cohort, mode) and download the global bundle; its digest must be the
   one in the plan, which is also bound into the secure-aggregation session id;
2. enforce the privacy budget *before* training: the accountant projects epsilon with this round's
   DP event; if it passes the budget the client declines, with the reason, and trains nothing;
3. accept, train the LoRA adapter with DP-SGD, build the strategy payload;
4. protect it (secagg masking / CKKS encryption / plaintext in debug mode);
5. append the DP event to the ledger (durable) and report the signed entry, THEN release the update.

Network failures reconnect with exponential backoff (jittered from a CSPRNG); a session the server
abandoned (crash, abort) is simply dropped: the next plan starts a fresh one with fresh keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefed import __version__
from securefed.client.config import ClientConfig
from securefed.client.progress import Progress
from securefed.errors import (
    BudgetExceeded,
    ConfigError,
    CryptoError,
    InvalidMessage,
    NotRegistered,
    ProtocolAbort,
    SecureFedError,
    TransportError,
)
from securefed.faults import fault_point
from securefed.logs import get_logger, log
from securefed.protocol.bundle import Bundle, decode_bundle, write_adapter_file
from securefed.protocol.plan import cohort_ids, plan_bytes, verify_plan
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("client")

FaultHook = Callable[[str, int], None]  # (point, attempt): tests make a client go silent here


_SEQ_LOCK = threading.Lock()
_SEQ = [time.time_ns() // 1000]  # microseconds: increases across restarts of the daemon too


def _next_sequence() -> int:
    """Request sequence numbers only ever increase (the server refuses replays by them)."""
    with _SEQ_LOCK:
        _SEQ[0] = max(_SEQ[0] + 1, time.time_ns() // 1000)
        return _SEQ[0]


class GoSilent(Exception):
    """Raised by a test fault hook: abandon the current session without telling the server."""


@dataclass
class RoundSession:
    plan: pb.RoundPlan
    attempt: int
    bundle: Bundle
    strategy: Any
    me: int
    ids: Any
    secagg: Any = None
    payload: Any = None
    event: Any = None
    released: bool = False
    decrypted: bool = False
    mode: int = 0
    extra: dict = field(default_factory=dict)

    def next_seq(self) -> int:
        return _next_sequence()


class ClientDaemon:
    def __init__(self, config: ClientConfig, *, fault: FaultHook | None = None,
                 stop: threading.Event | None = None) -> None:
        from cryptography.hazmat.primitives import serialization

        from securefed.crypto.keys import IdentityKeyPair
        from securefed.privacy.ledger import Ledger
        from securefed.transport import identity as tid

        self.config = config
        self.name = config.client.name
        self.creds = tid.load_client_credentials(config.client.credentials_dir, self.name)
        raw = self.creds.identity_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                serialization.NoEncryption())
        self.identity = IdentityKeyPair.from_private_bytes(raw)
        self.state_dir = Path(config.client.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger.open_or_create(config.ledger_path, self.identity, client_id=self.name,
                                            budget=config.privacy)
        self.fault = fault
        self.stop_event = stop or threading.Event()
        self._channel = None
        self._stub = None
        self._model = None
        self._lora_json: str | None = None
        self._data = None
        self._heldout = None
        self._ckks = None
        self._sigma: float | None = None
        self._ca = None
        from securefed.client.guards import GraphGrindingGuard

        self._grinding = GraphGrindingGuard(config.client.sparse_graph_max_retries)
        self._tokenizer = None
        self._budget_lock = threading.Lock()
        self._budget_cache: dict = {}
        self._budget_threads: dict = {}
        self.session: RoundSession | None = None
        self.latest_bundle: Bundle | None = None
        self.rounds_trained = 0
        self.declined: list[tuple[int, str]] = []
        self.history: list[dict] = []  # one entry per round outcome this client saw (for the demo/tests)
        # This member's own released payloads by attempt (its own data; lets tests compare the secure
        # aggregate with the plaintext FedAvg of exactly these updates).
        self.released_payloads: dict[int, np.ndarray] = {}
        self.client_state_path = self.state_dir / "strategy_client_state.npy"

    # ------------------------------------------------------------------------------------------
    # connection
    def _connect(self) -> None:
        from securefed.transport.messages import FederationStub
        from securefed.transport.tls import make_channel

        if self._channel is not None:
            self._channel.close()
        c = self.config.client
        self._channel = make_channel(c.server, c.credentials_dir, self.name, server_name=c.server_name)
        self._stub = FederationStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.ledger.close()

    def _header(self, stage: int = pb.STAGE_UNSPECIFIED, session: bytes = b"", seq: int = 0) -> pb.RequestHeader:
        s = self.session
        return pb.RequestHeader(client_id=self.name, session_id=session, round=s.attempt if s else 0, stage=stage,
                                sequence=seq)

    def _call(self, method: str, request, **kw):
        """One unary RPC; gRPC failures become typed securefed errors."""
        import grpc

        from securefed.transport.service import error_from_rpc

        try:
            return getattr(self._stub, method)(request, timeout=self.config.connection.rpc_timeout_s, **kw)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _register(self) -> None:
        resp = self._call("Register", pb.RegisterRequest(
            header=pb.RequestHeader(client_id=self.name, stage=pb.STAGE_REGISTER),
            identity_public_key=self.identity.public_bytes(), software_version=__version__,
            supported_modes=[pb.AGGREGATION_MODE_SECAGG, pb.AGGREGATION_MODE_CKKS, pb.AGGREGATION_MODE_PLAINTEXT]))
        log(logger, "registered", client=resp.client_id, federation=resp.federation_id, server_round=resp.current_round)

    # ------------------------------------------------------------------------------------------
    # the pull loop
    def run(self) -> int:
        """Serve the federation until it is done (0), or give up on the server (non-zero)."""
        conn = self.config.connection
        backoff = conn.backoff_initial_s
        down_since: float | None = None
        registered = False
        log(logger, "client starting", client=self.name, server=self.config.client.server,
            epsilon_spent=round(self.ledger.epsilon(), 4), target_epsilon=self.config.privacy.target_epsilon)
        self.prepare()
        self._connect()
        while not self.stop_event.is_set():
            try:
                if not registered:
                    self._register()
                    registered = True
                task = self._call("PollTask", pb.PollTaskRequest(header=self._header(), max_wait_ms=int(conn.poll_wait_s * 1000)))
                backoff, down_since = conn.backoff_initial_s, None
                if self._handle(task):
                    return 0
            except TransportError as exc:
                registered = False
                now = time.monotonic()
                down_since = down_since or now
                if conn.give_up_after_s is not None and now - down_since > conn.give_up_after_s:
                    log(logger, "giving up: server unreachable", seconds=round(now - down_since, 1), error=str(exc))
                    return 3
                delay = backoff * (0.5 + secrets.randbelow(1000) / 1000.0)
                log(logger, "server unreachable, retrying", retry_in_s=round(delay, 2), error=str(exc))
                self._drop_session("connection lost")
                if self.stop_event.wait(delay):
                    break
                backoff = min(backoff * 2, conn.backoff_max_s)
                self._connect()
            except GoSilent:
                self._drop_session("fault injection: going silent")
            except NotRegistered as exc:  # the server restarted or forgot us: register again
                self._drop_session(str(exc))
                registered = False
            except (InvalidMessage, ProtocolAbort, CryptoError) as exc:
                # The server refused one of our messages, or the protocol failed a check: this
                # session is over for us. Keep serving; the next plan starts fresh.
                log(logger, "session ended", reason=str(exc))
                self._drop_session(str(exc))
        log(logger, "client stopped", client=self.name)
        return 0  # stopped on request (SIGTERM/SIGINT): not a failure

    def _drop_session(self, reason: str) -> None:
        if self.session is not None:
            log(logger, "leaving round", attempt=self.session.attempt, reason=reason)
        self.session = None

    def _handle(self, task: pb.Task) -> bool:
        body = task.WhichOneof("body")
        if body == "wait" or body is None:
            return False
        if body == "done":
            self._on_done(task.done)
            return True
        if body == "plan":
            self._on_plan(task.plan)
            return False
        if body == "aborted":
            log(logger, "round aborted by the server", attempt=task.round, reason=task.aborted.reason)
            self.history.append({"attempt": task.round, "outcome": "aborted", "reason": task.aborted.reason})
            if self.session is not None and self.session.attempt == task.round:
                self.session = None
            return False
        if body == "aggregate_ready":
            self._on_aggregate_ready(task)
            return False
        if body == "decrypt_request":
            if self.session is not None and self.session.attempt == task.round:
                self._ckks_decrypt(self.session, task.decrypt_request)
            else:
                self.stop_event.wait(0.5)
            return False
        s = self.session
        if s is None or task.round != s.attempt:
            # A stage of a session we are not (or no longer) part of: the server keeps offering it
            # until the stage closes, so do not spin on it.
            self.stop_event.wait(0.5)
            return False
        if body == "key_broadcast":
            self._on_secagg(task, pb.STAGE_SHARE_KEYS)
        elif body == "share_delivery":
            self._on_secagg(task, pb.STAGE_MASKED_INPUT)
        elif body == "survivor_list":
            self._on_secagg(task, pb.STAGE_CONSISTENCY_CHECK)
        elif body == "unmask_request":
            self._on_secagg(task, pb.STAGE_UNMASK)
        return False

    # ------------------------------------------------------------------------------------------
    # plan
    def _download(self, attempt: int) -> tuple[int, int, list[bytes], int]:
        import grpc

        from securefed.transport.chunking import ChunkAssembler
        from securefed.transport.service import error_from_rpc

        parts: list[bytes] = []
        kind = rnd = 0
        asm = None
        nbytes = 0
        req = pb.DownloadAggregateRequest(header=pb.RequestHeader(client_id=self.name, round=attempt, stage=pb.STAGE_AGGREGATE))
        try:
            prog = None
            for msg in self._stub.DownloadAggregate(req, timeout=self.config.connection.rpc_timeout_s):
                if prog is None:
                    prog = Progress("download", int(msg.chunk.total_size) * max(1, msg.count), "B", attempt=attempt)
                kind, rnd = msg.kind, msg.round
                if asm is None:
                    asm = ChunkAssembler()
                nbytes += len(msg.chunk.data)
                prog.update(len(msg.chunk.data))
                if asm.add(msg.chunk):
                    parts.append(asm.payload())
                    asm = None
            if prog is not None:
                prog.__exit__(None, None, None)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        if asm is not None or not parts:
            raise InvalidMessage("incomplete download")
        return rnd, kind, parts, nbytes

    def _fetch_global(self, attempt: int, expected_digest: bytes | None) -> Bundle:
        rnd, kind, parts, _ = self._download(attempt)
        if kind != pb.AGGREGATE_KIND_GLOBAL_ADAPTER or len(parts) != 1:
            raise InvalidMessage("expected the global adapter bundle")
        bundle = decode_bundle(parts[0], "global adapter from the server")
        if expected_digest is not None and not hmac.compare_digest(bytes.fromhex(bundle.digest), expected_digest):
            raise ProtocolAbort("the global adapter the server sent does not match the plan's digest")
        return bundle

    def _decline(self, plan: pb.RoundPlan, reason: str) -> None:
        s = self.session
        assert s is not None
        self._call("SubmitResult", pb.SubmitResultRequest(
            header=self._header(pb.STAGE_PLAN, bytes(plan.plan_sha256), s.next_seq()),
            plan_decision=pb.PlanDecision(participate=False, decline_reason=reason[:300])))
        self.declined.append((s.attempt, reason))
        self.history.append({"attempt": s.attempt, "outcome": "declined", "reason": reason})
        log(logger, "declined the round", attempt=s.attempt, reason=reason)
        self.session = None

    def _on_plan(self, plan: pb.RoundPlan) -> None:
        from securefed.strategies import StrategySettings, make_strategy
        from securefed.training.config import LoraSettings

        verify_plan(plan)
        ids = cohort_ids(plan)
        me = ids.int_of(self.name)
        members = {m.client_id: bytes(m.identity_public_key) for m in plan.cohort}
        if not hmac.compare_digest(members[self.name], self.identity.public_bytes()):
            raise ProtocolAbort("the plan lists another identity key for this client")
        self._check_cohort_certificates(plan)
        attempt = int(plan.round)
        log(logger, "round plan received", attempt=attempt, mode=pb.AggregationMode.Name(plan.mode).split("_")[-1].lower(),
            cohort=[m.client_id for m in plan.cohort], global_digest=plan.global_adapter_sha256.hex()[:16])
        lb = self.latest_bundle
        if lb is not None and hmac.compare_digest(bytes.fromhex(lb.digest), bytes(plan.global_adapter_sha256)):
            bundle = lb  # already verified when the previous round completed: no second download
        else:
            bundle = self._fetch_global(attempt, bytes(plan.global_adapter_sha256))
        settings = json.loads(bundle.settings_json)
        strategy = make_strategy(StrategySettings.model_validate(settings["strategy"]), dim=bundle.vector.size)
        self.session = RoundSession(plan=plan, attempt=attempt, bundle=bundle, strategy=strategy, me=me, ids=ids,
                                    mode=plan.mode)
        if plan.vector_length != strategy.payload_size:
            raise ProtocolAbort(f"plan vector_length {plan.vector_length} != strategy payload {strategy.payload_size}")
        c = self.config.client
        t = int(plan.secagg.threshold)
        if len(plan.cohort) < c.min_cohort_size or (plan.mode != pb.AGGREGATION_MODE_PLAINTEXT and t < c.min_threshold):
            self._decline(plan, f"cohort of {len(plan.cohort)} with threshold {t} is below this member's minimums "
                                f"(min_cohort_size {c.min_cohort_size}, min_threshold {c.min_threshold})")
            return
        lora = LoraSettings.model_validate(settings["lora"])
        if self.config.lora is not None and self.config.lora != lora:
            self._decline(plan, f"the federation's LoRA settings {settings['lora']} differ from this member's [lora]")
            return
        sparse = plan.mode == pb.AGGREGATION_MODE_SECAGG and plan.secagg.neighbours != 0
        if sparse and not self._grinding.allows(bundle.digest):
            self._decline(plan, f"{self._grinding.unreleased(bundle.digest)} sparse-graph sessions for this adapter "
                                "ended before this member's release: declining more (graph-grinding guard)")
            return
        if plan.mode == pb.AGGREGATION_MODE_CKKS and self.config.client.ckks_secret_context is None:
            self._decline(plan, "mode ckks needs client.ckks_secret_context")
            return
        if plan.mode == pb.AGGREGATION_MODE_CKKS and 2 * t <= len(plan.cohort):
            self._decline(plan, f"ckks threshold {t} is not a strict majority of the {len(plan.cohort)} listed members")
            return
        if plan.mode == pb.AGGREGATION_MODE_PLAINTEXT:
            if not self.config.client.allow_plaintext_for_debugging:
                self._decline(plan, "the server asked for a plaintext round (it would see this member's update); "
                                    "refused: set client.allow_plaintext_for_debugging only for debugging")
                return
            log(logger, "WARNING: plaintext round: the server will see this member's update in clear")
        self._ensure_model(lora, bundle)
        # ---- budget: decide before training --------------------------------------------------
        try:
            sigma, budget_fields = self._check_budget(attempt)
        except (BudgetExceeded, ConfigError) as exc:
            self._decline(plan, f"privacy budget: {exc}")
            return
        s = self.session
        self._call("SubmitResult", pb.SubmitResultRequest(
            header=self._header(pb.STAGE_PLAN, bytes(plan.plan_sha256), s.next_seq()),
            plan_decision=pb.PlanDecision(participate=True)))
        log(logger, "accepted the round", attempt=attempt, noise_multiplier=round(sigma, 4), **budget_fields)
        self._fault("after_accept", attempt)
        # ---- train ---------------------------------------------------------------------------
        payload, result = self._train(s, sigma)
        s.payload = payload
        from securefed.privacy.events import event_from_training

        s.event = event_from_training(result, client_id=self.name, round_id=attempt, delta=self.config.privacy.delta,
                                      accountant=self.config.privacy.accountant, config_hash=self._config_hash())
        planned = getattr(self, "_last_planned", None)
        if planned is not None and (s.event.noise_multiplier, s.event.sample_rate, s.event.steps) != planned:
            # What ran is not what the budget check approved: check what ran, before anything is released.
            from securefed.privacy.budget import BudgetGuard

            try:
                BudgetGuard(self.config.privacy, dataset_size=len(self._data)).check(self.ledger.events(), s.event)
            except BudgetExceeded as exc:
                raise ProtocolAbort(f"training ran other DP parameters than approved and they exceed the budget: {exc}") from None
        self.rounds_trained += 1
        self._fault("after_training", attempt)
        # ---- protect -------------------------------------------------------------------------
        if plan.mode == pb.AGGREGATION_MODE_SECAGG:
            self._start_secagg(s)
        elif plan.mode == pb.AGGREGATION_MODE_CKKS:
            self._send_ckks(s)
        elif plan.mode == pb.AGGREGATION_MODE_PLAINTEXT:
            self._send_plaintext(s)
        else:
            raise ProtocolAbort("unknown aggregation mode in the plan")

    def _budget_key(self, planned) -> tuple:
        head = self.ledger.head()
        return (head.length, head.entry_hash, planned.noise_multiplier, planned.sample_rate, planned.steps,
                planned.delta, planned.accountant)

    def _project(self, planned):
        """The guard's projection for ``planned`` on top of the ledger, memoised by its exact inputs
        (ledger head + mechanism), so the RDP work can run ahead of the next plan."""
        from securefed.privacy.budget import BudgetGuard

        key = self._budget_key(planned)
        with self._budget_lock:
            th = self._budget_threads.get(key)
        if th is not None and th is not threading.current_thread():
            th.join()
        with self._budget_lock:
            hit = self._budget_cache.get(key)
        if hit is None:
            hit = BudgetGuard(self.config.privacy, dataset_size=len(self._data)).project(self.ledger.events(), planned)
            with self._budget_lock:
                self._budget_cache = {key: hit}
        return hit

    def _precompute_budget(self) -> None:
        """After a release: project the next round in the background (same sigma, q and steps).

        Everything, building the planned event included, runs on the worker thread: nothing of it
        sits between the ledger append and the upload."""
        threading.Thread(target=self._precompute_budget_worker, name=f"budget-{self.name}", daemon=True).start()

    def _precompute_budget_worker(self) -> None:
        try:
            _, planned = self._planned_event(0)
        except SecureFedError:
            return
        key = self._budget_key(planned)
        me = threading.current_thread()
        with self._budget_lock:
            if key in self._budget_cache or key in self._budget_threads:
                return
            self._budget_threads[key] = me
        try:
            self._project(planned)
        except SecureFedError:
            pass  # the round's own check repeats the projection and reports the reason
        finally:
            with self._budget_lock:
                self._budget_threads.pop(key, None)

    def _check_cohort_certificates(self, plan: pb.RoundPlan) -> None:
        """Every listed member must come with a client certificate from the CA this member pins,
        binding the listed key: the server cannot pad the cohort with identities it made up."""
        from securefed.client.cohort import load_ca, verify_cohort

        if self._ca is None:
            self._ca = load_ca(self.creds.ca_pem)
        verify_cohort(self._ca, plan)

    def _check_budget(self, attempt: int) -> tuple[float, dict]:
        """The noise multiplier for this round, after the budget guard accepted the projection.

        Raises ``BudgetExceeded`` when this round would pass the budget (the caller declines)."""
        from securefed.privacy.budget import BudgetGuard

        sigma, planned = self._planned_event(attempt)
        self._last_planned = (planned.noise_multiplier, planned.sample_rate, planned.steps)
        p = self._project(planned)
        if not p.within_budget:
            # The guard's own check raises BudgetExceeded with the full reason.
            BudgetGuard(self.config.privacy, dataset_size=len(self._data)).check(self.ledger.events(), planned)
        return sigma, {"epsilon_before": round(p.epsilon_before, 4), "epsilon_after": round(p.epsilon_after, 4),
                       "target_epsilon": p.target_epsilon}

    def _config_hash(self) -> str:
        blob = json.dumps({"training": self.config.training.model_dump(mode="json"),
                           "privacy": self.config.privacy.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _planned_event(self, attempt: int):
        from securefed.privacy.budget import calibrate_noise
        from securefed.privacy.events import DpEvent, LibraryVersions, utc_timestamp
        from securefed.training.dp import plan_steps

        t = self.config.training
        q, steps = plan_steps(t, len(self._data))
        sigma = t.noise_multiplier
        if sigma is None:
            # Calibrated once for every round this member plans to join (one sigma for the whole run,
            # as the accountant assumes), not re-searched each round; after a restart it is
            # recalibrated for the rounds that remain, on top of what the ledger says was spent.
            if self._sigma is None:
                prior = self.ledger.events()
                remaining = max(1, self.config.client.planned_rounds - len(prior))
                b = self.config.privacy
                self._sigma = calibrate_noise(b.target_epsilon, b.delta, q, steps * remaining, b.accountant,
                                              prior_events=prior)
                log(logger, "noise calibrated", noise_multiplier=round(self._sigma, 4), rounds=remaining,
                    steps_per_round=steps, sample_rate=round(q, 6), target_epsilon=b.target_epsilon)
            sigma = self._sigma
        ev = DpEvent(client_id=self.name, round_id=attempt, noise_multiplier=sigma, sample_rate=q, steps=steps,
                     delta=self.config.privacy.delta, clip_norm=t.clip_norm, accountant=self.config.privacy.accountant,
                     secure_rng=t.secure_mode, library_versions=LibraryVersions.current(),
                     config_hash=self._config_hash(), timestamp=utc_timestamp())
        return sigma, ev

    def _ensure_model(self, lora, bundle: Bundle) -> None:
        from securefed.training.adapter import AdapterLayout, load_adapter_vector
        from securefed.training.model import load_model

        lj = lora.model_dump_json()
        if self._model is None or self._lora_json != lj:
            loaded = load_model(self.config.client.base_model_dir, lora=lora)
            self._model, self._tokenizer, self._lora_json = loaded.model, loaded.tokenizer, lj
            if self._data is None:
                self._load_data()
        load_adapter_vector(self._model, np.array(bundle.vector, dtype=np.float32), AdapterLayout.from_json(bundle.layout_json))

    def prepare(self) -> None:
        """Before joining: tokenize the data and calibrate the noise, so rounds only train."""
        from securefed.training.model import load_tokenizer

        if self._data is None:
            self._tokenizer = self._tokenizer or load_tokenizer(self.config.client.base_model_dir)
            self._load_data()
        try:
            _, planned = self._planned_event(0)
            p = self._project(planned)
            log(logger, "privacy budget", epsilon_spent=round(p.epsilon_before, 4), target_epsilon=p.target_epsilon,
                next_round_epsilon_after=round(p.epsilon_after, 4), within_budget=p.within_budget)
        except SecureFedError as exc:  # e.g. budget already spent: every plan will be declined, with the reason
            log(logger, "privacy budget check at start-up", result=str(exc))

    def _load_data(self) -> None:
        from securefed.training import data as td

        d = self.config.data
        block = self.config.training.max_seq_len
        if d.path is not None:
            self._data = td.load_jsonl(d.path, self._tokenizer, block)
        else:
            self._data = td.demo_client_dataset(self._tokenizer, d.demo_client, d.demo_clients, block)
            if self.config.client.eval_heldout:
                self._heldout = td.demo_heldout_dataset(self._tokenizer, d.demo_clients, block)
        log(logger, "training data loaded", examples=len(self._data), block_size=block)

    def _train(self, s: RoundSession, sigma: float):
        from securefed.strategies.base import load_vector
        from securefed.training.dp import train_local

        client_state = None
        if s.strategy.initial_client_state() is not None:
            dim = s.bundle.vector.size
            client_state = (load_vector(self.client_state_path, dim) if self.client_state_path.exists()
                            else s.strategy.initial_client_state())
        hooks = s.strategy.client_hooks(client_state, s.bundle.server_state)
        from securefed.training.dp import plan_steps

        _, steps = plan_steps(self.config.training, len(self._data))
        with Progress("training", steps, "step", attempt=s.attempt) as prog:
            result = train_local(self._model, self._data, self.config.training, sigma, strategy_state=hooks,
                                 progress=lambda i, n, loss: prog.update(1, loss=loss))
        payload = s.strategy.client_payload(result, client_state=client_state, server_state=s.bundle.server_state)
        s.extra["client_state"] = payload.client_state
        log(logger, "local training done", attempt=s.attempt, steps=result.steps, sample_rate=round(result.sample_rate, 5),
            noise_multiplier=round(result.noise_multiplier, 4), train_loss=round(result.train_loss, 4),
            seconds=round(result.seconds, 2), clipping=result.clipping_mode.value)
        return payload, result

    # ------------------------------------------------------------------------------------------
    # release: ledger first, then the update
    def _record_and_report(self, s: RoundSession) -> None:
        self.released_payloads[s.attempt] = np.array(s.payload.vector, dtype=np.float64)
        entry = self.ledger.append(s.event)  # durable before anything derived from the update leaves
        self._fault("after_ledger", s.attempt)
        rep = pb.PrivacyEventReport(
            header=self._header(pb.STAGE_PRIVACY_REPORT, b"", s.next_seq()), sequence=entry.seq,
            prev_hash=bytes.fromhex(entry.prev_hash), entry=entry.event_bytes, entry_hash=bytes.fromhex(entry.entry_hash),
            signature=entry.signature)
        self._call("ReportPrivacyEvent", rep)
        log(logger, "privacy event recorded", attempt=s.attempt, ledger_seq=entry.seq)
        self._precompute_budget()

    def _upload_masked(self, s: RoundSession, stage: int, session_id: bytes, ring_bits: int, data: bytes) -> None:
        import grpc

        from securefed.transport.chunking import split_payload
        from securefed.transport.service import error_from_rpc

        header = self._header(stage, session_id, s.next_seq())
        rb = pb.RING_BITS_64 if ring_bits == 64 else pb.RING_BITS_32
        n_el = len(data) * 8 // ring_bits
        chunks = list(split_payload(data))
        prog = Progress("upload", len(data), "B", attempt=s.attempt)

        def gen():
            for ch in chunks:
                prog.update(len(ch.data))
                yield pb.MaskedInputChunk(header=header, ring_bits=rb, num_elements=n_el, chunk=ch)

        try:
            self._stub.UploadMasked(gen(), timeout=self.config.connection.rpc_timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            prog.__exit__(None, None, None)

    # secagg ------------------------------------------------------------------------------------
    def _start_secagg(self, s: RoundSession) -> None:
        from securefed import secagg as sa
        from securefed.protocol import secagg_wire as wire
        from securefed.secagg.client import setup_digest

        plan = s.plan
        expected_model = bytes(plan.global_adapter_sha256)

        def accept(setup: sa.RoundSetup) -> None:
            if setup.model_hash != expected_model or setup.plan != plan_bytes(plan):
                raise ProtocolAbort("round setup does not match the plan this client accepted")

        setup0 = wire.round_setup(plan, s.ids, b"\0" * 32)
        setup = sa.RoundSetup(**{**setup0.__dict__, "session_id": setup_digest(setup0)})
        client = sa.SecAggClient(s.me, self.identity, accept_setup=accept)
        client.set_input(np.asarray(s.payload.vector, dtype=np.float64))
        adv = client.handle(setup)
        s.secagg = client
        if plan.secagg.neighbours != 0:
            self._grinding.joined(s.bundle.digest, s.attempt)
        self._fault("before_advertise", s.attempt)
        self._call("SubmitResult", pb.SubmitResultRequest(
            header=self._header(pb.STAGE_ADVERTISE_KEYS, adv.session_id, s.next_seq()),
            advertise_keys=wire.advertise_to_pb(adv, s.ids)))

    def _on_secagg(self, task: pb.Task, stage: int) -> None:
        from securefed.protocol import secagg_wire as wire

        s = self.session
        assert s is not None
        if s.secagg is None:
            return
        sid = bytes(task.session_id)
        if stage == pb.STAGE_SHARE_KEYS:
            kb = wire.key_broadcast_from_pb(task.key_broadcast, s.ids)
            if not hmac.compare_digest(kb.session_id, sid):
                raise ProtocolAbort("key broadcast names another session")
            c = self.config.client
            if s.plan.secagg.neighbours and c.sparse_graph_needs_all_keys and len(kb.keys) != len(s.plan.cohort):
                # With a sparse graph, the set of keys seeds the graph: letting the server choose whom
                # to leave out lets it grind for a graph that surrounds a victim with colluders.
                raise ProtocolAbort("sparse-graph round with members' keys left out: leaving it (graph grinding guard)")
            reply = s.secagg.handle(kb)
            self._fault("before_share_keys", s.attempt)
            self._call("SubmitResult", pb.SubmitResultRequest(
                header=self._header(stage, reply.session_id, s.next_seq()), share_keys=wire.share_keys_to_pb(reply, s.ids)))
        elif stage == pb.STAGE_MASKED_INPUT:
            msg = wire.share_delivery_from_pb(task.share_delivery, sid, s.me, s.ids)
            reply = s.secagg.handle(msg)  # the masked input: nothing has left the client yet
            self._fault("before_masked_input", s.attempt)
            self._record_and_report(s)
            bits, data = wire.masked_to_bytes(reply)
            self._upload_masked(s, stage, reply.session_id, bits, data)
            s.released = True
            self._grinding.released(s.attempt)
            self._fault("after_masked_input", s.attempt)
        elif stage == pb.STAGE_CONSISTENCY_CHECK:
            reply = s.secagg.handle(wire.survivors_from_pb(task.survivor_list, sid, s.ids))
            self._call("SubmitResult", pb.SubmitResultRequest(
                header=self._header(stage, reply.session_id, s.next_seq()),
                consistency_signature=wire.consistency_to_pb(reply, s.ids)))
        elif stage == pb.STAGE_UNMASK:
            reply = s.secagg.handle(wire.unmask_request_from_pb(task.unmask_request, sid, s.ids))
            self._fault("before_unmask", s.attempt)
            self._call("SubmitResult", pb.SubmitResultRequest(
                header=self._header(stage, reply.session_id, s.next_seq()), unmask_response=wire.unmask_to_pb(reply, s.ids)))

    # plaintext (debug) -------------------------------------------------------------------------
    def _send_plaintext(self, s: RoundSession) -> None:
        from securefed.crypto.fixedpoint import FixedPointParams, encode

        p = s.plan.secagg
        fp = FixedPointParams(clip=float(p.clip), frac_bits=int(p.frac_bits), ring_bits=int(p.ring_bits))
        enc, _ = encode(np.asarray(s.payload.vector, dtype=np.float64), fp)
        self._record_and_report(s)
        self._upload_masked(s, pb.STAGE_PLAINTEXT_UPLOAD, b"", fp.ring_bits, enc.astype(enc.dtype.newbyteorder("<")).tobytes())
        s.released = True

    # ckks --------------------------------------------------------------------------------------
    def _ckks_context(self, plan: pb.RoundPlan):
        from securefed import he

        if self._ckks is None:
            c = plan.ckks
            name = next((p.name for p in he.PARAMETER_SETS.values()
                         if p.poly_modulus_degree == c.poly_modulus_degree
                         and tuple(p.coeff_mod_bit_sizes) == tuple(c.coeff_mod_bit_sizes)
                         and p.global_scale_bits == c.global_scale_bits), None)
            if name is None:
                raise ProtocolAbort("the plan names CKKS parameters this client does not know")
            raw = Path(self.config.client.ckks_secret_context).read_bytes()  # type: ignore[arg-type]
            self._ckks = he.ClientContext.from_secret_bytes(raw, name)
        if not hmac.compare_digest(hashlib.sha256(self._ckks.public_bytes()).digest(), bytes(plan.ckks.public_context_sha256)):
            raise ProtocolAbort("the server's CKKS context is not this federation's (public context digest differs)")
        return self._ckks

    def _send_ckks(self, s: RoundSession) -> None:
        import grpc

        from securefed.protocol.ckks import contribution_digest, contribution_payload
        from securefed.transport.chunking import split_payload
        from securefed.transport.service import error_from_rpc

        ctx = self._ckks_context(s.plan)
        enc = ctx.encrypt(np.asarray(s.payload.vector, dtype=np.float64))
        chunks = enc.to_chunks()
        s.extra["ckks_digest"] = contribution_digest(chunks)
        # Signed, so decryptors can check the sum they are asked to decrypt is made of real contributions.
        sig = self.identity.sign(contribution_payload(s.plan.plan_sha256, s.attempt, self.name, s.extra["ckks_digest"]))
        parts = [*chunks, sig]
        self._record_and_report(s)
        header = self._header(pb.STAGE_CIPHERTEXT_UPLOAD, b"", s.next_seq())
        prog = Progress("upload", sum(len(p) for p in parts), "B", attempt=s.attempt)

        def gen():
            for i, part in enumerate(parts):
                for ch in split_payload(part):
                    prog.update(len(ch.data))
                    yield pb.CiphertextChunk(header=header, index=i, count=len(parts), chunk=ch)

        try:
            self._stub.UploadCiphertext(gen(), timeout=self.config.connection.rpc_timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            prog.__exit__(None, None, None)
        s.released = True

    def _ckks_confirm(self, s: RoundSession, task: pb.Task, parts: list[bytes]) -> None:
        """Check the decryption request (>= t signed contributions, own included) and confirm it."""
        from securefed import he
        from securefed.client.ckks import checked_contributions
        from securefed.protocol.ckks import confirmation_payload, digest_parts
        from securefed.transport._generated import secagg_pb2 as secagg_pb

        digest = digest_parts(parts)
        if not hmac.compare_digest(digest, bytes(task.aggregate_ready.sha256)):
            raise ProtocolAbort("decryption request does not match its announced digest")
        if s.extra.get("ckks_request") is not None:
            raise ProtocolAbort("a second decryption request in one attempt: refused (one contributor set per attempt)")
        ctx = self._ckks_context(s.plan)
        items = checked_contributions(s.plan, s.attempt, parts, self.name, s.extra.get("ckks_digest"))
        agg = he.ServerAggregator(he.ServerContext.from_public_bytes(ctx.public_bytes(), ctx.params),
                                  int(s.plan.vector_length))
        for c, chunks in items:
            agg.add(chunks, sender=c)
        s.extra["ckks_request"] = (digest, agg.result_chunks(), len(items))
        sig = self.identity.sign(confirmation_payload(s.plan.plan_sha256, s.attempt, digest))
        self._call("SubmitResult", pb.SubmitResultRequest(
            header=self._header(pb.STAGE_CONSISTENCY_CHECK, b"", s.next_seq()),
            consistency_signature=secagg_pb.ConsistencySignature(client_id=self.name, signature=sig)))

    def _ckks_decrypt(self, s: RoundSession, req: pb.DecryptRequest) -> None:
        """Decrypt the confirmed sum, only once >= t members confirmed the same contributor set."""
        from securefed.client.ckks import check_confirmations
        from securefed.protocol.ckks import encode_decrypted

        got = s.extra.get("ckks_request")
        if got is None or s.decrypted:
            return
        digest, sum_chunks, count = got
        check_confirmations(s.plan, s.attempt, digest, req)
        ctx = self._ckks_context(s.plan)
        total = ctx.decrypt(sum_chunks, int(s.plan.vector_length), summands=count)
        self._fault("before_decrypt_upload", s.attempt)
        self._upload_masked(s, pb.STAGE_AGGREGATE, b"", 64, encode_decrypted(total))
        s.decrypted = True

    # ------------------------------------------------------------------------------------------
    # outcomes
    def _on_aggregate_ready(self, task: pb.Task) -> None:
        s = self.session
        rnd, kind, parts, _ = self._download(task.round)
        if kind == pb.AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM:
            if s is None or s.attempt != task.round or s.decrypted or not s.released:
                return
            self._ckks_confirm(s, task, parts)
            return
        bundle = decode_bundle(parts[0], "global adapter from the server")
        if not hmac.compare_digest(bytes.fromhex(bundle.digest), bytes(task.aggregate_ready.sha256)):
            raise ProtocolAbort("new global adapter does not match its announced digest")
        self._keep_global(bundle, rnd)
        entry = {"attempt": task.round, "outcome": "completed", "round": rnd, "digest": bundle.digest,
                 "participated": bool(s is not None and s.attempt == task.round and s.released)}
        if s is not None and s.attempt == task.round:
            st = s.extra.get("client_state")
            if st is not None:
                from securefed.strategies.base import save_vector

                save_vector(self.client_state_path, st)  # SCAFFOLD c_i advances only with a committed round
            self.session = None
        if self._heldout is not None:
            entry["heldout_ppl"] = self.evaluate(bundle)
        self.history.append(entry)
        log(logger, "round completed", attempt=task.round, round=rnd, global_digest=bundle.digest[:16],
            participated=entry["participated"], epsilon_spent=round(self.ledger.epsilon(), 4),
            **({"heldout_ppl": round(entry["heldout_ppl"], 3)} if "heldout_ppl" in entry else {}))

    def _keep_global(self, bundle: Bundle, rnd: int) -> None:
        """Keep the received global adapter so the member can use the model locally."""
        d = self.state_dir / "global"
        write_adapter_file(d / "adapter.safetensors", bundle.vector, bundle.layout_json, {"round": str(rnd)},
                           settings_json=bundle.settings_json, server_state=bundle.server_state)
        (d / "ROUND").write_text(f"{rnd} {bundle.digest}\n")
        self.latest_bundle = bundle

    def export_peft(self, out_dir: Path | None = None) -> Path | None:
        """Write the latest global adapter as a PEFT adapter directory (adapter_model.safetensors +
        adapter_config.json), loadable with ``PeftModel.from_pretrained(base, dir)``."""
        b = self.latest_bundle
        if b is None or self._model is None:
            return None
        from securefed.training.adapter import AdapterLayout, load_adapter_vector

        load_adapter_vector(self._model, np.array(b.vector, dtype=np.float32), AdapterLayout.from_json(b.layout_json))
        out = out_dir or (self.state_dir / "global" / "peft")
        self._model.save_pretrained(str(out))
        return out

    def evaluate(self, bundle: Bundle) -> float:
        from securefed.training.adapter import AdapterLayout, load_adapter_vector
        from securefed.training.data import evaluate

        load_adapter_vector(self._model, np.array(bundle.vector, dtype=np.float32), AdapterLayout.from_json(bundle.layout_json))
        _, ppl = evaluate(self._model, self._heldout, max_examples=64)
        return float(ppl)

    def _on_done(self, done: pb.Done) -> None:
        try:
            if self.latest_bundle is None or done.final_round != self._latest_round():
                self._keep_global(self._fetch_global(0, None), int(done.final_round))
        except SecureFedError as exc:
            log(logger, "could not fetch the final adapter", error=str(exc))
        peft_dir = None
        try:
            peft_dir = self.export_peft()
        except SecureFedError as exc:
            log(logger, "could not export the PEFT adapter", error=str(exc))
        log(logger, "federation finished", final_round=done.final_round, reason=done.reason,
            rounds_trained=self.rounds_trained, epsilon_spent=round(self.ledger.epsilon(), 4),
            target_epsilon=self.config.privacy.target_epsilon,
            adapter=str(self.state_dir / "global" / "adapter.safetensors"), peft_adapter=str(peft_dir) if peft_dir else None)

    def _latest_round(self) -> int:
        p = self.state_dir / "global" / "ROUND"
        try:
            return int(p.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return -1

    def _fault(self, point: str, attempt: int) -> None:
        fault_point(f"client:{point}", attempt)
        if self.fault is not None:
            self.fault(point, attempt)
