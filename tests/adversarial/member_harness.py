"""A real member daemon whose server is played by the test (imported as a plain module).

``Federation(tmp, tiny_model, n)`` provisions n members (CA, certificates, the tiny model, configs) and
the honest round-0 global bundle. ``federation.member(name)`` is that member's real ``ClientDaemon``
with its connection replaced by ``ScriptedServer``: the test queues tasks (plans bound to whatever
bundle it serves, aborts, completions, Done) and reads back everything the member sent. ``serve`` is
the member's real pull loop; it returns when the script ends with the server's signed Done.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from safetensors.numpy import save

from securefed.client.config import load_client_config
from securefed.client.connection import Connection, Download
from securefed.client.daemon import ClientDaemon
from securefed.client.hooks import MemberHooks
from securefed.client.pull_loop import serve
from securefed.federation import provision, set_client_server
from securefed.protocol.bundle import STATE_TENSOR, TENSOR_NAME, adapter_digest
from securefed.protocol.ending import seal_end
from securefed.protocol.plan import seal_plan
from securefed.server.app import initial_adapter, server_fingerprint
from securefed.server.config import load_server_config
from securefed.strategies import make_strategy
from securefed.transport import identity as tid
from securefed.transport._generated import federation_pb2 as pb

# One tiny DP-SGD step a round: the tests here are about what the member accepts, not about training.
TINY_TRAINING = {"steps": 1, "batch_size": 4, "max_seq_len": 16, "clipping": "hooks"}


def bundle_bytes(vector: np.ndarray, layout_json: str, settings_json: str,
                 server_state: np.ndarray | None = None) -> tuple[bytes, bytes]:
    """(safetensors bytes, digest) of a bundle, crafted as the server likes (no value checks)."""
    tensors = {TENSOR_NAME: np.ascontiguousarray(vector, dtype=np.float32)}
    if server_state is not None:
        tensors[STATE_TENSOR] = np.ascontiguousarray(server_state, dtype=np.float32)
    digest = adapter_digest(tensors[TENSOR_NAME], layout_json, settings_json, server_state)
    meta = {"layout": layout_json, "settings": settings_json, "digest": digest, "format": "securefed-bundle/v1"}
    return save(tensors, metadata=meta), bytes.fromhex(digest)


class Watch(MemberHooks):
    def __init__(self) -> None:
        self.outcomes: list[tuple[int, str, dict]] = []
        self.released_attempts: list[int] = []

    def released(self, attempt: int, payload: np.ndarray) -> None:
        self.released_attempts.append(attempt)

    def outcome(self, attempt: int, outcome: str, **fields: object) -> None:
        self.outcomes.append((attempt, outcome, fields))


class ScriptedServer(Connection):
    """The member's connection, answered by the test."""

    def __init__(self, config, end: pb.Done) -> None:
        super().__init__(config)
        self.end = end  # the server's signed end of the federation: what a script ends with
        self.tasks: deque[pb.Task] = deque()
        self.bundles: dict[int, tuple[int, bytes]] = {}  # attempt -> (round, bundle bytes); -1: any other
        self.sent: list[tuple[int, str, object]] = []  # (attempt, kind, message), in order

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def register(self, identity_public_key: bytes) -> pb.RegisterResponse:
        return pb.RegisterResponse(client_id=self.name, federation_id="scripted", current_round=0)

    def poll(self, attempt: int, wait_s: float) -> pb.Task:
        return self.tasks.popleft() if self.tasks else pb.Task(done=self.end)

    def submit(self, header: pb.RequestHeader, **result) -> pb.SubmitResultResponse:
        (kind, msg), = result.items()
        self.sent.append((int(header.round), kind, msg))
        return pb.SubmitResultResponse(accepted=True)

    def call(self, method: str, request):
        self.sent.append((int(request.header.round), method, request))
        return pb.PrivacyEventAck(recorded_sequence=getattr(request, "sequence", 0))

    def download(self, attempt: int) -> Download:
        rnd, data = self.bundles.get(attempt, self.bundles.get(-1, (0, b"")))
        return Download(rnd, pb.AGGREGATE_KIND_GLOBAL_ADAPTER, [data], len(data))

    def upload_masked(self, header, ring_bits, data) -> None:
        self.sent.append((int(header.round), "upload_masked", len(data)))

    def upload_ciphertext(self, header, parts) -> None:
        self.sent.append((int(header.round), "upload_ciphertext", len(parts)))

    # --- what the test reads -------------------------------------------------------------------
    def decisions(self) -> list[tuple[int, bool, str]]:
        return [(a, m.participate, m.decline_reason) for a, k, m in self.sent if k == "plan_decision"]

    def accepted(self) -> list[int]:
        return [a for a, ok, _ in self.decisions() if ok]

    def advertised(self) -> list[int]:
        return [a for a, k, _ in self.sent if k == "advertise_keys"]


class Federation:
    def __init__(self, tmp: Path, tiny_model: Path, n: int = 3, *, client: dict | None = None,
                 per_client: dict | None = None) -> None:
        self.p = provision(tmp, n, mode="secagg", rounds=3, threshold=n // 2 + 1, model_dir=tiny_model,
                           server={"federation": {"max_colluding_members": 0}},
                           client={"training": TINY_TRAINING, "client": {"planned_rounds": 20}, **(client or {})},
                           per_client=per_client)
        for toml in self.p.client_tomls.values():  # a scripted connection replaces the dial; any real port will do
            set_client_server(toml, "127.0.0.1:9")
        self.server_config = load_server_config(self.p.server_toml)
        self.base_fingerprint = server_fingerprint(self.server_config)
        vec, layout, settings, state = initial_adapter(self.server_config, self.base_fingerprint)
        self.vector, self.layout_json, self.settings_json, self.server_state = vec, layout, settings, state
        self.payload_size = make_strategy(self.server_config.strategy, dim=vec.size).payload_size
        self.bound = make_strategy(self.server_config.strategy, dim=1).payload_bound()
        self.cohort = []
        for name in sorted(self.p.client_tomls):
            der = x509.load_pem_x509_certificate((self.p.pki / "clients" / f"{name}.pem").read_bytes()).public_bytes(
                serialization.Encoding.DER)
            key = tid.raw_public_key(tid.load_client_credentials(self.p.pki, name).identity_public_key)
            self.cohort.append(pb.CohortMember(client_id=name, identity_public_key=key, certificate=der))

    def signed_end(self) -> pb.Done:
        """The end a member stops on: signed with the federation's server key (``protocol.ending``)."""
        creds = tid.load_server_credentials(self.p.pki)
        return seal_end(pb.Done(final_round=0, reason="script ended", federation_id="scripted",
                                ending=pb.FEDERATION_ENDING_COMPLETED), creds.certificate_pem, creds.private_key_pem)

    def honest_bundle(self, nudge: int = 0) -> tuple[bytes, bytes]:
        """The round-0 bundle; ``nudge`` ulps added to one weight give another digest for the same adapter."""
        vec = np.array(self.vector, dtype=np.float32)
        for _ in range(nudge):
            vec[0] = np.nextafter(vec[0], np.float32(np.inf))
        return bundle_bytes(vec, self.layout_json, self.settings_json, self.server_state)

    def settings(self) -> dict:
        return json.loads(self.settings_json)

    def plan(self, attempt: int, digest: bytes, *, threshold: int = 3, neighbours: int = 0) -> pb.RoundPlan:
        return seal_plan(pb.RoundPlan(
            round=attempt, global_adapter_sha256=digest, mode=pb.AGGREGATION_MODE_SECAGG,
            strategy=pb.StrategyParams(strategy=pb.STRATEGY_FEDAVG, server_learning_rate=1.0),
            secagg=pb.SecAggParams(threshold=threshold, neighbours=neighbours, ring_bits=64, frac_bits=32,
                                   clip=float(self.bound)),
            cohort=self.cohort, vector_length=self.payload_size, stage_timeout_ms=60_000,
            base_model_fingerprint=bytes.fromhex(self.base_fingerprint)))

    def member(self, name: str = "member-1") -> tuple[ClientDaemon, ScriptedServer, Watch]:
        watch = Watch()
        daemon = ClientDaemon(load_client_config(self.p.client_tomls[name]), hooks=watch)
        daemon.connection = server = ScriptedServer(daemon.config, self.signed_end())
        daemon.end._connection = server
        daemon.deps = dataclasses.replace(daemon.deps, connection=server)
        daemon.adapters.connection = daemon.deps.record_release.connection = server  # the parts that talk to it
        return daemon, server, watch


def offer(server: ScriptedServer, attempt: int, plan: pb.RoundPlan, bundle: bytes, *, abort_after: bool = True,
          rnd: int = 0) -> None:
    """Queue a plan (served with ``bundle``) and, after it, the server abandoning that attempt."""
    server.bundles[attempt] = (rnd, bundle)
    server.tasks.append(pb.Task(round=attempt, stage=pb.STAGE_PLAN, plan=plan))
    if abort_after:
        server.tasks.append(pb.Task(round=attempt, aborted=pb.RoundAborted(reason="the server let it time out")))


def run(daemon: ClientDaemon) -> int:
    try:
        return serve(daemon)
    finally:
        daemon.close()
