"""The member daemon: a pull loop over the Federation service that dispatches each task to its part.

Per plan, in this order (each step can end the member's part in the attempt):

1. ``admission.check_plan``: digest, this member's key, a certified cohort; an attempt newer than any it
   acted on (``MemberState``: a replayed plan is refused); the global bundle (``GlobalIntake``), whose
   digest must be the plan's (also bound into the secure-aggregation session id);
2. ``admission.decline_reason``: this member's own rules (minimum cohort and threshold, the colluder
   bound for its own ``max_colluding_members``, LoRA settings, graph-grinding guard, mode);
3. the budget, *before* training: ``BudgetPlanner.approve`` projects epsilon with this round's DP
   event; if it would pass the budget the member declines, with the reason, and trains nothing;
4. accept, train the LoRA adapter with DP-SGD (``Trainer``), build the strategy payload;
5. protect it (``SecAggSession`` / ``CkksSession`` / plaintext in debug mode), appending the DP event
   to the ledger (durable) and reporting the signed entry BEFORE the update leaves (``release``).

Network failures reconnect with exponential backoff (jittered from a CSPRNG); a session the server
abandoned (crash, abort) is simply dropped: the next plan starts a fresh one with fresh keys. While it
works on an attempt the member sends heartbeats (``heartbeat``), so a dead member is noticed in
seconds. Anything the server sends that fails to decode or check is a typed error that ends that
session only (``pull_loop``); a plan or adapter no honest server sends is a ``SecurityAlert``, logged
and reported.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization

from securefed.client import admission, alerts, bundle_check, federation_end
from securefed.client.budget import BudgetPlanner
from securefed.client.certificates import MemberCertificates
from securefed.client.ckks_session import CkksSession, MemberKey
from securefed.client.cohort import load_ca
from securefed.client.config import ClientConfig
from securefed.client.connection import Connection
from securefed.client.dataset import event_context, member_dataset, open_ledger
from securefed.client.global_intake import GlobalIntake
from securefed.client.global_store import GlobalStore, keep_or_log
from securefed.client.guards import GraphGrindingGuard
from securefed.client.heartbeat import Heartbeat
from securefed.client.hooks import MemberHooks
from securefed.client.library_check import LibraryVersionCheck
from securefed.client.member_state import MemberState, federation_key
from securefed.client.plaintext_session import send_plaintext
from securefed.client.pull_loop import serve
from securefed.client.release import ReleaseRecorder
from securefed.client.secagg_session import SecAggSession
from securefed.client.session import RoundSession, SessionDeps
from securefed.client.storage_guard import StorageGuard
from securefed.client.trainer import Trainer
from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidInput,
    InvalidMessage,
    ModelError,
    PlannedRoundsDone,
    SecureFedError,
)
from securefed.faults import fault_point
from securefed.logs import get_logger, log
from securefed.privacy.events import event_from_training
from securefed.protocol.bundle import Bundle
from securefed.protocol.plan import cohort_ids
from securefed.protocol.stages import SECAGG_TASK_STAGE
from securefed.training.config import LoraSettings
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb

logger = get_logger("client")


class ClientDaemon:
    def __init__(self, config: ClientConfig, *, hooks: MemberHooks | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.name = config.client.name
        self.hooks = hooks or MemberHooks()
        self.stop_event = stop or threading.Event()
        if config.client.server.endswith(":0"):
            raise ConfigError(f"client.server: {config.client.server!r}: port 0 cannot be dialled; set the server's port")
        creds = tid.load_client_credentials(config.client.credentials_dir, self.name)
        self.identity = IdentityKeyPair.from_private_bytes(creds.identity_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
        self.ca = load_ca(creds.ca_pem)
        self.state_dir = Path(config.client.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.certificates = MemberCertificates(config, creds, self.ca)  # own certificate valid, not revoked
        self.dataset = member_dataset(config)
        self.ledger = open_ledger(config, self.identity, self.dataset)  # one per dataset, across federations
        self.connection = Connection(config, stop=self.stop_event)
        self.trainer = Trainer(config)
        self.store = GlobalStore(self.state_dir)
        self.member_state = MemberState(self.state_dir / "member_state.sqlite",
                                        federation_key(self.ca.public_bytes(serialization.Encoding.DER)))
        self.adapters = GlobalIntake(self.connection, self.store, self.member_state)
        self.grinding = GraphGrindingGuard(self.member_state, config.client.sparse_graph_max_retries,
                                           config.client.sparse_graph_window_s)
        self._refused_attempt, self.library_check = 0, LibraryVersionCheck()
        self.ckks_key = MemberKey(config.client.ckks_secret_context) if config.client.ckks_secret_context else None
        release = ReleaseRecorder(self.ledger, self.connection, self.hooks, self._fault, then=lambda: self.budget.precompute_next())
        self.deps = SessionDeps(self.connection, self.identity, self.name, self._fault, release)
        self._planning = 0  # the attempt whose plan is being handled (heartbeats cover it too)
        self.heartbeat = Heartbeat(self.connection, lambda: self._planning or self.current_attempt(),
                                   interval_s=config.connection.heartbeat_s, target_epsilon=config.privacy.target_epsilon)
        self._budget: BudgetPlanner | None = None
        self.session: RoundSession | None = None
        self.protocol: SecAggSession | CkksSession | None = None
        self.rounds_trained = 0  # attempts it trained for (some may have aborted)
        self.rounds_contributed = 0  # completed rounds whose aggregate holds its update
        self.end = federation_end.MemberEnd(self.ca, self.connection, self.stop_event)
        self.storage = StorageGuard()  # a full disk: leave the attempt, decline for a while, never exit

    @property
    def budget(self) -> BudgetPlanner:
        if self._budget is None:
            self._budget = BudgetPlanner(self.config, self.ledger, self.trainer.dataset_size)
        return self._budget

    def run(self) -> int:
        """Serve the federation until it is done (0), or give up on the server (non-zero)."""
        log(logger, "client starting", client=self.name, server=self.config.client.server,
            epsilon_spent=round(self.ledger.epsilon(), 4), target_epsilon=self.config.privacy.target_epsilon)
        self.prepare()
        self.heartbeat.start()
        return serve(self)

    def close(self) -> None:
        self.trainer.close()  # stops its worker ranks, if any
        self.heartbeat.close()
        self.connection.close()
        self.ledger.close()
        self.member_state.close()

    def prepare(self) -> None:
        """Before joining: budget feasibility (a config that can never train: ``ConfigError``, exit 2),
        base fingerprint, memory plan, data and noise calibration, so that rounds only train."""
        self.budget.check_feasible()
        self.trainer.check_ranks()  # [model] processes this machine cannot run: exit 2 now, not at the first plan
        self.trainer.base_fingerprint()
        if self.config.model.max_memory_gb is not None:
            plan = self.trainer.memory_plan(self.config.lora or LoraSettings())
            log(logger, "memory plan", plan=plan.describe(), max_memory_gb=self.config.model.max_memory_gb)
        try:
            _, p = self.budget.approve(0)
            log(logger, "privacy budget", epsilon_spent=round(p.epsilon_before, 4), target_epsilon=p.target_epsilon,
                next_round_epsilon_after=round(p.epsilon_after, 4), within_budget=p.within_budget)
        except BudgetExceeded as exc:
            log(logger, "this member will decline every round", level=logging.WARNING, reason=str(exc))

    def on_registered(self, resp: pb.RegisterResponse) -> None:
        self.heartbeat.set_interval(resp.heartbeat_interval_ms / 1000.0)
        self.end.federation_id = resp.federation_id

    def drop_session(self, reason: str) -> None:
        if self.session is not None:
            log(logger, "leaving the attempt", attempt=self.session.attempt, reason=reason)
        self.session, self.protocol = None, None

    def current_attempt(self) -> int:
        return self.session.attempt if self.session else 0

    # --- dispatch -------------------------------------------------------------------------------
    def handle(self, task: pb.Task) -> bool:
        """Act on one task; True once the federation is done."""
        body = task.WhichOneof("body")
        if body == "done":  # only a signed end stops the member; anything else is an outage to wait out
            newest = self.certificates.revocations.newest
            if self.end.accept(task.done, newest.serials if newest else frozenset()):
                federation_end.finish(self, task.done)
            return self.end.ending is not None
        if body == "plan":
            self._on_plan(task.plan)
        elif body == "aborted":
            log(logger, "attempt aborted by the server", attempt=task.round, reason=task.aborted.reason)
            self.hooks.outcome(task.round, "aborted", reason=task.aborted.reason)
            if self.current_attempt() == task.round:
                self.session, self.protocol = None, None
        elif body == "aggregate_ready":
            self._on_aggregate_ready(task)
        elif body == "decrypt_request" and self._live(task, CkksSession):
            self.heartbeat.doing(pb.MEMBER_ACTIVITY_PROTECTING)
            self.protocol.decrypt(task.decrypt_request)
        elif body in SECAGG_TASK_STAGE and self._live(task, SecAggSession):
            self.heartbeat.doing(pb.MEMBER_ACTIVITY_PROTECTING)
            self.protocol.on_task(task)
            self.heartbeat.doing(pb.MEMBER_ACTIVITY_WAITING)
        elif body not in ("wait", None):
            # a stage of a session we are not (or no longer) in is offered until it closes: do not spin
            self.stop_event.wait(0.5)
        return False

    def _live(self, task: pb.Task, kind: type) -> bool:
        return self.session is not None and task.round == self.session.attempt and isinstance(self.protocol, kind)

    # --- plan -------------------------------------------------------------------------------------
    def _on_plan(self, plan: pb.RoundPlan) -> None:
        self._planning = int(plan.round)
        self.heartbeat.preparing(self.ledger.epsilon())
        try:
            self._take_plan(plan)
        finally:
            self._planning = 0
            self.heartbeat.doing(pb.MEMBER_ACTIVITY_WAITING)

    def _take_plan(self, plan: pb.RoundPlan) -> None:
        try:
            admission.check_plan(plan, self.name, self.identity.public_bytes(), self.ca)
        except SecureFedError as exc:
            raise alerts.refused_plan(exc, int(plan.round)) from None
        attempt = int(plan.round)
        if self.session is not None and self.session.attempt == attempt:
            self.stop_event.wait(0.5)  # the plan of the session it is in, handed out again: answered already
            return
        if attempt <= self.member_state.last_attempt():
            return self._refuse_replay(attempt)
        ids = cohort_ids(plan)
        log(logger, "round plan received", attempt=attempt, round=plan.federation_round or None,
            mode=admission.MODE_NAMES[plan.mode], cohort=[m.client_id for m in plan.cohort],
            global_digest=plan.global_adapter_sha256.hex()[:16])
        bundle = self.adapters.for_plan(attempt, bytes(plan.global_adapter_sha256))
        fed = bundle_check.federation_settings(bundle)
        self.session = s = RoundSession(plan, attempt, ids, ids.int_of(self.name), bundle, fed.strategy)
        self.protocol = None
        admission.check_payload_size(plan, fed.strategy.payload_size)
        base = admission.base_model_reason(plan, fed.raw, self.trainer.base_fingerprint())
        disk = self.storage.decline_reason()
        reason = (self.certificates.decline_reason(plan) or base or disk
                  or admission.decline_reason(plan, fed.lora, self.config, self.grinding))
        if reason is not None:  # the server reacts to the kind: a base that differs cannot change while it runs
            kind = pb.PLAN_DECLINE_KIND_BASE_MODEL if reason is base else pb.PLAN_DECLINE_KIND_POLICY
            return self._decline(reason, pb.PLAN_DECLINE_KIND_LOCAL_STORAGE if reason is disk else kind)
        if (reason := self.library_check.decline_reason(plan)) is not None:
            return self._decline(reason, pb.PLAN_DECLINE_KIND_LIBRARY_VERSIONS)
        if plan.mode == pb.AGGREGATION_MODE_PLAINTEXT:
            log(logger, "plaintext round: the server will see this member's update in clear", level=logging.WARNING)
        try:
            self._load_global(fed.lora, bundle)
        except ConfigError as exc:  # e.g. the federation's adapter does not fit this member's max_memory_gb
            return self._decline(str(exc), pb.PLAN_DECLINE_KIND_POLICY)
        try:
            s.approved, projection = self.budget.approve(attempt)
        except PlannedRoundsDone as exc:
            return self._decline(f"planned rounds done: {exc}", pb.PLAN_DECLINE_KIND_PLANNED_ROUNDS_DONE)
        except (BudgetExceeded, ConfigError) as exc:
            return self._decline(f"privacy budget: {exc}", pb.PLAN_DECLINE_KIND_PRIVACY_BUDGET)
        if not self.storage.write(self.member_state.act_on, attempt):  # durable before it answers (never twice)
            return self._decline(self.storage.decline_reason() or "cannot write", pb.PLAN_DECLINE_KIND_LOCAL_STORAGE)
        self.connection.submit(self.connection.header(attempt, pb.STAGE_PLAN, s.plan_digest),
                               plan_decision=pb.PlanDecision(participate=True))
        log(logger, "accepted the attempt", attempt=attempt, round=plan.federation_round or None,
            noise_multiplier=round(s.approved.noise_multiplier, 4),
            epsilon_before=round(projection.epsilon_before, 4), epsilon_after=round(projection.epsilon_after, 4),
            target_epsilon=projection.target_epsilon)
        self._fault("after_accept", attempt)
        payload = self._train(s)
        self.heartbeat.doing(pb.MEMBER_ACTIVITY_PROTECTING)
        if plan.mode == pb.AGGREGATION_MODE_SECAGG:
            self.protocol = SecAggSession(self.deps, s, self.grinding,
                                          needs_all_keys=self.config.client.sparse_graph_needs_all_keys,
                                          max_colluders=self.config.client.max_colluding_members)
            self.protocol.start(payload)
        elif plan.mode == pb.AGGREGATION_MODE_CKKS:
            self.protocol = CkksSession(self.deps, s, self.ckks_key, self.member_state)
            self.protocol.contribute(payload)
        else:
            send_plaintext(self.deps, s, payload)

    def _load_global(self, lora: LoraSettings, bundle: Bundle) -> None:
        try:
            self.trainer.load_global(lora, bundle)
        except (ModelError, InvalidInput) as exc:  # the server's LoRA settings or adapter do not fit the base model
            raise InvalidMessage(f"the federation's global adapter does not fit this member's base model: {exc}") from None

    def _refuse_replay(self, attempt: int) -> None:
        if attempt != self._refused_attempt:  # the server re-offers a plan until its stage closes: log it once
            self._refused_attempt = attempt
            log(logger, "security: refused a replayed plan", level=logging.WARNING, attempt=attempt,
                last_attempt_acted_on=self.member_state.last_attempt())
            self.hooks.outcome(attempt, "refused", reason="replayed plan")
        self.stop_event.wait(0.5)

    def _decline(self, reason: str, kind: int) -> None:
        s = self.session
        assert s is not None
        self.storage.write(self.member_state.act_on, s.attempt)  # a full disk is no reason to stay silent
        self.connection.submit(self.connection.header(s.attempt, pb.STAGE_PLAN, s.plan_digest),
                               plan_decision=pb.PlanDecision(participate=False, decline_reason=reason[:300],
                                                             decline_kind=kind))
        self.hooks.outcome(s.attempt, "declined", reason=reason)
        quiet = kind == pb.PLAN_DECLINE_KIND_POLICY
        log(logger, "declined the attempt", attempt=s.attempt,
            round=s.plan.federation_round or None, reason=reason, level=logging.INFO if quiet else logging.WARNING)
        self.session = None

    def _train(self, s: RoundSession) -> np.ndarray:
        """DP-SGD from the global adapter; the event that ran is checked against what was approved."""
        assert s.approved is not None
        try:
            payload, result = self.trainer.train(s.strategy, s.bundle, s.approved.noise_multiplier, s.attempt,
                                                 self.store.client_state_path, on_step=self.heartbeat.training_step)
        except (ModelError, InvalidInput) as exc:  # e.g. diverged from the global adapter it was sent
            raise InvalidMessage(f"training from the federation's global adapter failed: {exc}") from None
        s.client_state = payload.client_state
        p = self.config.privacy
        s.event = event_from_training(result, client_id=self.name, round_id=s.attempt, delta=p.delta,
                                      accountant=p.accountant, config_hash=self.budget.config_hash,
                                      context=event_context(s.plan, self.dataset, self.budget.dataset_size))
        self.budget.confirm_ran(s.approved, s.event)
        self.rounds_trained += 1
        self._fault("after_training", s.attempt)
        return np.asarray(payload.vector, dtype=np.float64)

    # --- outcomes ---------------------------------------------------------------------------------
    def _on_aggregate_ready(self, task: pb.Task) -> None:
        s = self.session
        got = self.connection.download(task.round)
        if got.kind == pb.AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM:
            p = self.protocol
            if self._live(task, CkksSession) and s.released and not p.decrypted:
                p.confirm(bytes(task.aggregate_ready.sha256), got.parts)
            return
        bundle = self.adapters.new_round(got, bytes(task.aggregate_ready.sha256))
        mine = s is not None and s.attempt == task.round
        participated = bool(mine and s.released)
        self.rounds_contributed += participated
        if mine:
            if s.client_state is not None:
                keep_or_log(self.store.save_client_state, s.client_state)  # SCAFFOLD c_i advances only with a committed round
            self.session, self.protocol = None, None
        ppl = self.trainer.evaluate(bundle)
        fields = {"heldout_ppl": ppl} if ppl is not None else {}
        self.hooks.outcome(task.round, "completed", round=got.round, digest=bundle.digest, participated=participated,
                           **fields)
        log(logger, "round completed", attempt=task.round, round=got.round, global_digest=bundle.digest[:16],
            participated=participated, epsilon_spent=round(self.ledger.epsilon(), 4),
            **{k: round(v, 3) for k, v in fields.items()})

    def _fault(self, point: str, attempt: int) -> None:
        fault_point(f"client:{point}", attempt)
        self.hooks.at(point, attempt)

