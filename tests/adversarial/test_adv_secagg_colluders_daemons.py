"""The main colluder attack (issue 10 §1) against REAL member daemons over mutual TLS.

The coordinator is the real ``ServerApp`` with a malicious secagg driver: three members, t = 2, and the
server claims nobody colludes (``max_colluding_members = 0``, so it accepts t = 2 of 3). member-3
colludes: the driver reads its shares from its (in-process) daemon and signs a second survivor list
with its identity key. member-1 (the victim) is shown the true list, member-2 a list with member-1
"dropped"; each sees t = 2 valid signatures, so member-1 reveals its own self-mask share and member-2
its share of member-1's mask key. With the colluder's shares of both, the server rebuilds both secrets
and strips every mask from member-1's masked input.

Negative control: members assuming no colluder (the old strict-majority rule) take the plan and the
server recovers member-1's released DP update. Defence: with the default ``max_colluding_members = 1``
the honest members decline the plan before training; nothing of theirs is released.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from securefed import secagg as sa
from securefed.client.hooks import MemberHooks
from securefed.crypto.fixedpoint import decode_sum
from securefed.crypto.prg import add_mask_
from securefed.crypto.shamir import Share, combine
from securefed.errors import ProtocolAbort
from securefed.federation import provision, start_clients
from securefed.protocol import secagg_wire as wire
from securefed.secagg.client import pairwise_mask_key, self_mask_key
from securefed.secagg.session import consistency_payload
from securefed.server.app import ServerApp
from securefed.server.config import load_server_config
from securefed.server.secagg_driver import SecAggDriver
from securefed.transport._generated import federation_pb2 as pb

pytestmark = pytest.mark.slow

VICTIM, HONEST, COLLUDER = "member-1", "member-2", "member-3"


class Watch(MemberHooks):
    def __init__(self) -> None:
        self.released_payloads: dict[int, np.ndarray] = {}
        self.declined: list[str] = []

    def released(self, attempt: int, payload: np.ndarray) -> None:
        self.released_payloads[attempt] = np.array(payload, dtype=np.float64)

    def outcome(self, attempt: int, outcome: str, **fields: object) -> None:
        if outcome == "declined":
            self.declined.append(str(fields.get("reason")))


class SplitViewDriver(SecAggDriver):
    """The malicious coordinator: honest up to the masked inputs, then two survivor lists."""

    def __init__(self, ctx, daemons: dict, loot: dict) -> None:
        super().__init__(ctx)
        self.daemons, self.loot = daemons, loot
        self.masked: dict[str, bytes] = {}
        self.signatures: dict[str, bytes] = {}
        self.responses: dict[str, sa.UnmaskResponse] = {}
        self.colluder_shares: tuple[Share, Share] | None = None
        self.lists: dict[str, tuple[int, ...]] = {}

    def on_masked_upload(self, phase, client, stage, ring_bits, data):
        super().on_masked_upload(phase, client, stage, ring_bits, data)
        self.masked[client] = bytes(data)

    def on_result(self, phase, client, kind, req):
        sid = self.server.session_id
        if kind == "consistency_signature":
            self.signatures[client] = bytes(req.consistency_signature.signature)
            phase.responded.add(client)
        elif kind == "unmask_response":
            self.responses[client] = wire.unmask_from_pb(req.unmask_response, sid, self.ids)
            phase.responded.add(client)
        else:
            super().on_result(phase, client, kind, req)

    def finish_phase(self, phase):
        ids, sid = self.ids, self.server.session_id
        v, h, z = ids.int_of(VICTIM), ids.int_of(HONEST), ids.int_of(COLLUDER)
        if phase.stage == pb.STAGE_MASKED_INPUT:
            nxt = super().finish_phase(phase)  # the honest survivor lists, one per member
            true_list = tuple(sorted(ids.int_of(c) for c in self.masked))
            self.lists = {VICTIM: true_list, COLLUDER: true_list, HONEST: tuple(c for c in true_list if c != v)}
            nxt.tasks[HONEST].survivor_list.ClearField("survivors")
            nxt.tasks[HONEST].survivor_list.survivors.extend(ids.name_of(c) for c in self.lists[HONEST])
            return nxt
        if phase.stage == pb.STAGE_CONSISTENCY_CHECK:
            u2 = tuple(sorted(self.server._u2))
            colluder = self.daemons[COLLUDER]
            self.colluder_shares = colluder.protocol.client._held[v]  # it hands over both its shares of v
            second = colluder.identity.sign(consistency_payload(sid, u2, self.lists[HONEST]))
            tasks = {}
            for name, signers in ((VICTIM, {VICTIM: self.signatures[VICTIM], COLLUDER: self.signatures[COLLUDER]}),
                                  (HONEST, {HONEST: self.signatures[HONEST], COLLUDER: second})):
                lst = self.lists[name]
                sigs = tuple(sa.SignedSurvivors(ids.int_of(c), s) for c, s in sorted(signers.items()))
                req = sa.UnmaskRequest(sid, sa.Stage.UNMASK, lst, tuple(sorted(set(u2) - set(lst))), sigs)
                tasks[name] = self._task(pb.STAGE_UNMASK, req)
            return self.open_phase(pb.STAGE_UNMASK, tasks, self.ctx.config.deadlines.unmask_s)
        if phase.stage == pb.STAGE_UNMASK:
            b_shares = [Share.from_bytes(s.share) for r in self.responses.values() for s in r.self_mask_shares
                        if s.owner == v]
            s_shares = [Share.from_bytes(s.share) for r in self.responses.values() for s in r.key_shares if s.owner == v]
            cb, cs = self.colluder_shares
            t = self.params.threshold
            b_seed, s_sk = combine(b_shares + [cb], t, 32), combine(s_shares + [cs], t, 32)
            keys = self.server._keys
            y = wire.masked_from_bytes(self.masked[VICTIM], self.params.ring_bits, self.ctx.payload_length, sid, v,
                                       bytes(64)).masked.copy()
            add_mask_(y, self_mask_key(b_seed, sid, v), -1)
            for u in (h, z):
                add_mask_(y, pairwise_mask_key(s_sk, keys[u].s_pk, sid, v, u), -1 if u > v else +1)
            self.loot["attempt"] = self.ctx.attempt
            self.loot["recovered"] = decode_sum(y, self.params.fixed_point(), 1)
            raise ProtocolAbort("malicious server: done")
        return super().finish_phase(phase)


def _attack(tmp_path, tiny_model, member_colluders: int) -> tuple[dict, dict[str, Watch]]:
    p = provision(
        tmp_path, 3, mode="secagg", rounds=1, threshold=2, model_dir=tiny_model,
        server={"federation": {"max_colluding_members": 0, "max_attempts": 1},  # the server claims no colluder
                "deadlines": {"join_s": 90.0, "training_s": 90.0, "share_keys_s": 15.0, "masked_input_s": 15.0,
                              "unmask_s": 15.0, "poll_s": 1.0}},
        client={"client": {"planned_rounds": 2}, "training": {"steps": 2, "batch_size": 8, "max_seq_len": 32},
                "connection": {"poll_wait_s": 1.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "give_up_after_s": 60.0}},
        per_client={VICTIM: {"client": {"max_colluding_members": member_colluders}},
                    HONEST: {"client": {"max_colluding_members": member_colluders}},
                    COLLUDER: {"client": {"max_colluding_members": 0}}},
    )
    app = ServerApp(load_server_config(p.server_toml))
    daemons: dict = {}
    loot: dict = {}
    app.coordinator._driver_factory = lambda ctx: SplitViewDriver(ctx, daemons, loot)  # the malicious coordinator
    port = app.start()
    watch = {n: Watch() for n in p.client_tomls}
    clients = start_clients(p, f"127.0.0.1:{port}", hooks=watch)
    daemons.update(clients.daemons)
    try:
        th = threading.Thread(target=app.run, daemon=True)
        th.start()
        th.join(180)
        app.coordinator.linger(5.0)
    finally:
        clients.shutdown()
        app.stop(grace=0.5)
    return loot, watch


def test_control_real_members_assuming_no_colluder_leak_the_victims_update(tmp_path, tiny_model):
    loot, watch = _attack(tmp_path, tiny_model, member_colluders=0)
    released = watch[VICTIM].released_payloads[loot["attempt"]]
    assert np.max(np.abs(released)) > 1e-4  # a real DP update, not zeros
    np.testing.assert_allclose(loot["recovered"], released, rtol=0, atol=1e-6)


def test_real_members_with_the_default_colluder_bound_decline_and_release_nothing(tmp_path, tiny_model):
    loot, watch = _attack(tmp_path, tiny_model, member_colluders=1)
    assert "recovered" not in loot
    for m in (VICTIM, HONEST):
        assert not watch[m].released_payloads
        assert any("max_colluding_members = 1" in r for r in watch[m].declined)
