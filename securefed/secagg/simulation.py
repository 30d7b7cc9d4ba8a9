"""In-memory driver: n clients and one server run a whole round with no network.

Used by the tests, the benchmarks, the threat-model checks and the daemons' contract tests::

    from securefed.secagg.simulation import simulate_round, DropAt
    out = simulate_round(inputs={1: x1, 2: x2, 3: x3}, params=SecAggParams(threshold=3))
    out.result.values            # float sum of the survivors' inputs
    out.result.ring_sum          # exact ring sum

Hooks:
* ``drop``: ``{client_id: Stage}``: the client goes silent instead of answering the server
  message of that stage (``Stage.ADVERTISE_KEYS`` = never joins; ``Stage.UNMASK`` = drops after
  the consistency check, so it is in the sum but sends no unmask shares).
* ``tamper``: ``(stage, recipient, message) -> message``, applied to every server->client
  message before delivery: a malicious server. Returning a different object delivers that one.
* ``corrupt``: ``(stage, sender, reply) -> reply``, applied to every client->server reply before the
  server gets it: a malicious member (e.g. garbage shares, signed with its own identity).
* ``on_client_abort``: RAISE (default) propagates the first client's ``ProtocolAbort``;
  DROP lets that client go silent (as a real client would) and records it in ``client_aborts``.

Returns a ``SimulationOutcome`` or raises ``ProtocolAbort`` (the server's, or a client's with RAISE).

For many clients or long vectors (``securefed simulate``, ``bench/secagg_scale.py``), ``SimulatedRound``
also takes each input as a zero-argument callable, called only when that client masks (so at most one
plaintext input is alive at a time; give ``vector_length``), and per-client ``rounding_keys`` for a
reproducible sum (``SecAggClient``'s rounding key); ``server_seconds`` holds the time spent in the
server's own calls, stage by stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import InvalidInput, InvalidMessage, ProtocolAbort
from securefed.secagg.client import ClientStats, SecAggClient
from securefed.secagg.messages import Stage
from securefed.secagg.params import DEFAULT_MAX_COLLUDERS, SecAggParams
from securefed.secagg.server import AggregateResult, SecAggServer

Tamper = Callable[[Stage, int, object], object]
Corrupt = Callable[[Stage, int, object], object]
Input = np.ndarray | Callable[[], np.ndarray]  # a vector, or a callable that makes it when the client masks


class OnClientAbort(Enum):
    RAISE = "raise"
    DROP = "drop"


@dataclass(frozen=True, eq=False)
class SimulationOutcome:
    result: AggregateResult
    server: SecAggServer = field(repr=False)
    clients: Mapping[int, SecAggClient] = field(repr=False)
    client_aborts: Mapping[int, str]  # client id -> abort message (OnClientAbort.DROP only)
    refused: Mapping[int, str]  # client id -> why the server refused its message (the client then counts as dropped)

    @property
    def stats(self) -> dict[int, ClientStats | None]:
        return {cid: c.stats for cid, c in self.clients.items()}


def make_identities(client_ids) -> dict[int, IdentityKeyPair]:
    """Fresh Ed25519 identity keys for the given ids."""
    return {cid: IdentityKeyPair.generate() for cid in client_ids}


class SimulatedRound:
    """A round you can step one stage at a time (``simulate_round`` runs it to the end).

    ``outbox`` holds the server messages of ``next_stage`` not yet delivered; ``step()`` delivers
    them (through ``tamper``, skipping clients that drop at that stage or aborted), hands the
    replies to the server and closes the stage. Tests can instead deliver messages by hand via
    ``clients[cid].handle(...)`` and ``server.receive(...)``.
    """

    def __init__(self, inputs: Mapping[int, Input], params: SecAggParams, *, round_id: int = 1,
                 plan: bytes = b"simulated-plan", model_hash: bytes = bytes(32),
                 identities: Mapping[int, IdentityKeyPair] | None = None, keep_history: bool = True,
                 max_colluders: int = DEFAULT_MAX_COLLUDERS, attribute: bool = True, vector_length: int | None = None,
                 rounding_keys: Mapping[int, bytes] | None = None) -> None:
        if not inputs:
            raise InvalidInput("inputs must name at least one client")
        lengths = {np.asarray(v).size for v in inputs.values() if not callable(v)}
        if vector_length is not None:
            lengths.add(vector_length)
        if len(lengths) != 1:
            raise InvalidInput("every client input must have the same length (give vector_length with lazy inputs)")
        self.identities = dict(identities) if identities is not None else make_identities(inputs)
        self.server_seconds: dict[Stage, float] = {}
        t0 = time.perf_counter()
        self.server = SecAggServer(params, round_id=round_id, vector_length=lengths.pop(), plan=plan,
                                   model_hash=model_hash, max_colluders=max_colluders,
                                   cohort={cid: self.identities[cid].public_bytes() for cid in inputs})
        keys = rounding_keys or {}
        self.clients = {cid: SecAggClient(cid, self.identities[cid], max_colluders=max_colluders, attribute=attribute,
                                          rounding_key=keys.get(cid))
                        for cid in sorted(inputs)}
        self._lazy = {cid: v for cid, v in inputs.items() if callable(v)}
        for cid, c in self.clients.items():
            if cid not in self._lazy:
                c.set_input(np.asarray(inputs[cid]))
        self.outbox: dict[int, object] = self.server.start()
        self.server_seconds[Stage.ADVERTISE_KEYS] = time.perf_counter() - t0
        self.next_stage: Stage | None = Stage.ADVERTISE_KEYS
        # What each client was given and answered, per stage (for replay tests); keep_history=False
        # keeps only the current stage, so large masked vectors are not all held at once.
        self.keep_history = keep_history
        self.sent: dict[Stage, dict[int, object]] = {}
        self.replies: dict[Stage, dict[int, object]] = {}
        self.client_aborts: dict[int, str] = {}
        self.refused: dict[int, str] = {}

    def step(self, *, drop: Mapping[int, Stage] | None = None, tamper: Tamper | None = None,
             on_client_abort: OnClientAbort = OnClientAbort.RAISE, corrupt: Corrupt | None = None) -> None:
        if self.next_stage is None:
            raise InvalidInput("the round is already complete")
        stage, drop = self.next_stage, drop or {}
        if not self.keep_history:
            self.sent.clear()
            self.replies.clear()
        self.sent[stage], self.replies[stage] = {}, {}
        for cid, msg in sorted(self.outbox.items()):
            if drop.get(cid) is stage or cid in self.client_aborts:
                continue
            if tamper is not None:
                msg = tamper(stage, cid, msg)
            self.sent[stage][cid] = msg
            if stage is Stage.MASKED_INPUT and cid in self._lazy:
                self.clients[cid].set_input(np.asarray(self._lazy.pop(cid)()))
            try:
                reply = self.clients[cid].handle(msg)
            except ProtocolAbort as exc:
                if on_client_abort is OnClientAbort.RAISE:
                    raise
                self.client_aborts[cid] = str(exc)
                continue
            if corrupt is not None:
                reply = corrupt(stage, cid, reply)
            if self.keep_history or stage is not Stage.MASKED_INPUT:
                self.replies[stage][cid] = reply
            t0 = time.perf_counter()
            try:
                self.server.receive(reply)
            except InvalidMessage as exc:
                self.refused[cid] = str(exc)
            finally:
                self._count(stage, t0)
            del reply  # a masked vector is summed on arrival; nothing here keeps it
        t0 = time.perf_counter()
        try:
            self.outbox = self.server.close_stage()
        finally:
            self._count(stage, t0)
        self.next_stage = Stage(stage + 1) if stage < Stage.UNMASK else None

    def _count(self, stage: Stage, t0: float) -> None:
        self.server_seconds[stage] = self.server_seconds.get(stage, 0.0) + time.perf_counter() - t0

    def run(self, **kwargs) -> SimulationOutcome:
        while self.next_stage is not None:
            self.step(**kwargs)
        return SimulationOutcome(self.server.result, self.server, self.clients, dict(self.client_aborts),
                                 dict(self.refused))


def simulate_round(inputs: Mapping[int, np.ndarray], params: SecAggParams, *, round_id: int = 1,
                   plan: bytes = b"simulated-plan", model_hash: bytes = bytes(32),
                   drop: Mapping[int, Stage] | None = None, tamper: Tamper | None = None,
                   identities: Mapping[int, IdentityKeyPair] | None = None,
                   on_client_abort: OnClientAbort = OnClientAbort.RAISE,
                   max_colluders: int = DEFAULT_MAX_COLLUDERS, corrupt: Corrupt | None = None,
                   attribute: bool = True) -> SimulationOutcome:
    """Run one full round; see the module docstring. Every party assumes ``max_colluders``."""
    drop = dict(drop or {})
    if set(drop) - set(inputs):
        raise InvalidInput(f"drop names unknown clients: {sorted(set(drop) - set(inputs))}")
    rnd = SimulatedRound(inputs, params, round_id=round_id, plan=plan, model_hash=model_hash, identities=identities,
                         max_colluders=max_colluders, attribute=attribute)
    return rnd.run(drop=drop, tamper=tamper, on_client_abort=on_client_abort, corrupt=corrupt)


def plain_ring_sum(encoded: Mapping[int, np.ndarray], ids) -> np.ndarray:
    """Reference: the ring sum of already-encoded vectors (for exactness checks)."""
    vecs = [encoded[i] for i in ids]
    total = np.zeros_like(vecs[0])
    for v in vecs:
        np.add(total, v, out=total)
    return total
