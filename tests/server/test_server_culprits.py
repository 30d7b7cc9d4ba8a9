"""A federation with one garbage-share member completes its round within two attempts, naming it.

The real coordinator, its secagg driver and the member's real secure-aggregation adapter
(``client.secagg_session``) talk through the mailbox in one process (no gRPC, no model): four honest
members and ``member-3``, whose shares for ``member-1`` and ``member-2`` are random bytes it signs.
The negative control turns attribution off in the honest members: every attempt stalls, nobody named.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import secrets
import threading
from pathlib import Path

import numpy as np

from securefed.client.secagg_session import SecAggSession
from securefed.client.session import RoundSession, SessionDeps
from securefed.config import parse_model
from securefed.crypto.keys import IdentityKeyPair
from securefed.protocol.plan import cohort_ids
from securefed.secagg.attribution import rejudge, sign_shares
from securefed.secagg.messages import EncryptedShare, ShareKeys
from securefed.server.config import ServerConfig
from securefed.server.culprits import read_culprits
from securefed.server.roundlog import AttemptStatus
from securefed.server.security_log import read_alerts
from securefed.server.status_view import show
from securefed.transport._generated import federation_pb2 as pb

NAMES = [f"member-{i}" for i in range(1, 6)]
CULPRIT, VICTIMS = "member-3", {"member-1", "member-2"}


def _coordinator(tmp_path: Path):
    from securefed.server.app import ServerApp

    cfg = parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"rounds": 1, "cohort_size": 5, "min_clients": 4, "threshold": 4, "mode": "secagg",
                       "max_attempts": 2},
        "strategy": {"kind": "fedavg", "max_samples": 100},
        "deadlines": {"training_s": 10.0, "join_s": 10.0, "poll_s": 0.2, "share_keys_s": 10.0,
                      "masked_input_s": 1.5, "unmask_s": 10.0},
        "model": {"fingerprint": "ab" * 32},
    })
    co = ServerApp(cfg).coordinator
    layout = '{"tensors":[],"version":1}'
    co._initial_adapter = lambda: (np.zeros(6, np.float32), layout, co.settings_json, None)
    return co


class _Wire:
    """The member's connection, straight into the mailbox."""

    def __init__(self, mailbox, name: str) -> None:
        self.mailbox, self.name, self.seq = mailbox, name, 0

    def header(self, attempt=0, stage=pb.STAGE_UNSPECIFIED, session=b"", sequenced=True):
        self.seq += 1
        return pb.RequestHeader(client_id=self.name, session_id=session, round=attempt, stage=stage, sequence=self.seq)

    def submit(self, header, **result):
        self.mailbox.submit(self.name, pb.SubmitResultRequest(header=header, **result))

    def upload_masked(self, header, ring_bits, data):
        self.mailbox.upload_masked(self.name, header, ring_bits, bytes(data))


class _NoGuard:
    finished_by: set[tuple[str, int]] = set()

    def __init__(self, name: str) -> None:
        self.name = name

    def joined(self, attempt):
        pass

    def released(self, attempt):
        pass

    def finished(self, attempt):  # the member saw the session through (the grinding guard starts afresh)
        self.finished_by.add((self.name, attempt))


def _garbage(session: SecAggSession, identity: IdentityKeyPair, victims: set[int]) -> None:
    """Make this member's shares for ``victims`` random bytes, signed by it (a malicious member)."""
    client, real = session.client, session.client.handle

    def handle(msg):
        reply = real(msg)
        if isinstance(reply, ShareKeys):
            keys = {k.client_id: k for k in msg.keys}
            inbox = {k.owner: (k.key, keys[k.owner].inbox_root) for k in msg.inbox_keys}
            shares = tuple(EncryptedShare(s.sender, s.receiver, secrets.token_bytes(len(s.ciphertext)))
                           if s.receiver in victims else s for s in reply.shares)
            sig = sign_shares(shares, identity=identity, sender_c_pk=keys[reply.client_id].c_pk,
                              session_id=reply.session_id, sender=reply.client_id, inbox=inbox)
            reply = dataclasses.replace(reply, shares=shares, signature=sig)
        return reply

    client.handle = handle


def _member(co, name: str, identity: IdentityKeyPair, stop: threading.Event, *, attribute: bool) -> None:
    wire = _Wire(co.mailbox, name)
    session = None
    while not stop.is_set():
        task = co.mailbox.poll(name, 0.5, attempt=session.s.attempt if session else 0)
        body = task.WhichOneof("body")
        if body == "done":
            return
        if body == "plan":
            plan = task.plan
            ids = cohort_ids(plan)
            wire.submit(wire.header(plan.round, pb.STAGE_PLAN, plan.plan_sha256),
                        plan_decision=pb.PlanDecision(participate=True))
            rs = RoundSession(plan, plan.round, ids, ids.int_of(name), None, None)  # type: ignore[arg-type]
            deps = SessionDeps(wire, identity, name, lambda point, attempt: None, lambda s, p: None)  # type: ignore[arg-type]
            session = SecAggSession(deps, rs, _NoGuard(name), needs_all_keys=True, max_colluders=1)  # type: ignore[arg-type]
            session.client._attribute = attribute
            if name == CULPRIT:
                _garbage(session, identity, {ids.int_of(v) for v in VICTIMS})
            session.start(np.full(plan.vector_length, 0.01 * (1 + NAMES.index(name))))
        elif session is not None and task.round == session.s.attempt and body in (
                "key_broadcast", "share_delivery", "survivor_list", "unmask_request"):
            try:
                session.on_task(task)
            except Exception:  # noqa: BLE001 - a member that leaves the session, as the daemon would
                session = None
        elif body in ("aborted", "aggregate_ready"):
            session = None


def _run(tmp_path: Path, *, attribute: bool):
    co = _coordinator(tmp_path)
    co.recover()
    ids = {n: IdentityKeyPair.generate() for n in NAMES}
    for n in NAMES:
        co.mailbox.register(n, ids[n].public_bytes())
    stop = threading.Event()
    members = [threading.Thread(target=_member, args=(co, n, ids[n], stop), kwargs={"attribute": attribute},
                                daemon=True) for n in NAMES]
    for t in members:
        t.start()
    ok = co.run()
    stop.set()
    for t in members:
        t.join(5)
    attempts = co.roundlog.attempts()
    co.roundlog.close()
    return ok, attempts


def test_one_garbage_share_member_the_round_completes_in_two_attempts_naming_it(tmp_path):
    ok, attempts = _run(tmp_path, attribute=True)
    assert ok
    assert [a.status for a in attempts] == [AttemptStatus.ABORTED, AttemptStatus.COMPLETED]
    assert re.search(r"member-3 sent a share that does not open to member-[12]", attempts[0].reason)
    assert CULPRIT not in attempts[1].cohort and len(attempts[1].survivors) == 4
    assert {(n, 2) for n in attempts[1].survivors} <= _NoGuard.finished_by
    culprits = read_culprits(tmp_path / "state")
    assert set(culprits) == {CULPRIT}
    assert rejudge(culprits[CULPRIT]["evidence"]).culprit == int(culprits[CULPRIT]["evidence"]["accused"])
    alerts = [a for a in read_alerts(tmp_path / "state") if a.get("kind") == "proven culprit"]
    assert [a["client"] for a in alerts] == [CULPRIT]
    json.dumps(culprits)  # the record is plain JSON an auditor can take away
    out = io.StringIO()
    show(tmp_path / "state", 1, last=5, as_json=False, watch=None, out=out)
    assert re.search(r"EXCLUDED member-3: proven culprit, never drawn again: member-3 sent a share", out.getvalue())
    assert "proven culprit (member member-3, attempt 1)" in out.getvalue()


def test_control_without_attribution_every_attempt_stalls_and_nobody_is_named(tmp_path):
    ok, attempts = _run(tmp_path, attribute=False)
    assert not ok
    assert [a.status for a in attempts] == [AttemptStatus.ABORTED] * 2
    # The garbage share stalls the masked inputs below the threshold of 4 (3 of 5: it costs one honest
    # member; fewer if a loaded machine also makes an honest member miss the short deadline). The retry
    # stalls the same way, or, on a loaded machine, earlier; either way nothing is released.
    assert re.search(r"only [0-3] clients answered stage MASKED_INPUT", attempts[0].reason), attempts[0].reason
    assert all("no aggregate released" in a.reason for a in attempts), [a.reason for a in attempts]
    assert read_culprits(tmp_path / "state") == {}
