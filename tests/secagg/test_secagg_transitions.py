"""Every (stage, message type) pair for the client and the server state machines.

Valid pairs advance; every invalid one raises ProtocolAbort on the client (which is then dead)
or InvalidMessage on the server (which keeps its state: one bad client must not kill the round).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from securefed.errors import InvalidMessage, ProtocolAbort
from securefed.secagg import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    ClientStage,
    SecAggParams,
    ServerStage,
    SimulatedRound,
    Stage,
)

# These cases exercise the protocol under the plain majority rule, with no colluder among a client's
# share holders; the colluder bound 2t >= m + c + 1 has its own attacks in test_adv_secagg_colluders.py.
NO_COLLUDERS = 0

N, D = 4, 8
PARAMS = SecAggParams(threshold=3, frac_bits=8)
INPUTS = {cid: np.full(D, cid / 16) for cid in range(1, N + 1)}
TARGET = 1


def _round_at(stage: Stage) -> SimulatedRound:
    """A fresh round whose clients have handled every stage before ``stage``."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    while rnd.next_stage is not stage:
        rnd.step()
    return rnd


@pytest.fixture(scope="module")
def finished() -> SimulatedRound:
    """A complete honest round: a source of well-formed messages of every stage (for another session)."""
    rnd = SimulatedRound(INPUTS, PARAMS, max_colluders=NO_COLLUDERS)
    rnd.run()
    return rnd


def _server_msg(rnd: SimulatedRound, finished: SimulatedRound, stage: Stage, msg_type: type):
    """The message of ``msg_type`` the target client would get: current, replayed, or future."""
    mstage = msg_type.STAGE
    if mstage == stage:
        return rnd.outbox[TARGET]
    if mstage < stage:
        return rnd.sent[mstage][TARGET]  # a replay from this very session
    # A future-stage message: well-formed, re-labelled with this session's id so only the stage is wrong.
    msg = finished.sent[mstage][TARGET]
    sid = rnd.clients[TARGET].session_id
    return dataclasses.replace(msg, session_id=sid)


@pytest.mark.parametrize(("stage", "msg_type"), list(itertools.product(Stage, SERVER_MESSAGE_TYPES)),
                         ids=lambda v: v.name if isinstance(v, Stage) else v.__name__)
def test_client_transition(stage: Stage, msg_type: type, finished: SimulatedRound) -> None:
    rnd = _round_at(stage)
    client = rnd.clients[TARGET]
    assert client.stage is ClientStage(stage)
    msg = _server_msg(rnd, finished, stage, msg_type)
    if msg_type.STAGE == stage:
        reply = client.handle(msg)
        assert type(reply) is CLIENT_MESSAGE_TYPES[stage - 1]
        assert reply.stage is stage and reply.client_id == TARGET
        assert client.stage is (ClientStage(stage + 1) if stage < Stage.UNMASK else ClientStage.DONE)
    else:
        with pytest.raises(ProtocolAbort):
            client.handle(msg)
        assert client.stage is ClientStage.ABORTED
        with pytest.raises(ProtocolAbort):  # dead for good, even for the right message
            client.handle(rnd.outbox[TARGET])


@pytest.mark.parametrize("msg_type", SERVER_MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_client_after_done_refuses_everything(msg_type: type, finished: SimulatedRound) -> None:
    client = finished.clients[TARGET]
    assert client.stage is ClientStage.DONE
    with pytest.raises(ProtocolAbort):
        client.handle(finished.sent[msg_type.STAGE][TARGET])


def test_client_refuses_non_messages() -> None:
    rnd = _round_at(Stage.ADVERTISE_KEYS)
    with pytest.raises(ProtocolAbort):
        rnd.clients[TARGET].handle(b"not a message")


def _client_reply(rnd: SimulatedRound, finished: SimulatedRound, stage: Stage, msg_type: type):
    """A client message of ``msg_type`` from the target client for a server collecting ``stage``."""
    mstage = msg_type.STAGE
    if mstage == stage:
        return rnd.clients[TARGET].handle(rnd.outbox[TARGET])
    if mstage < stage:
        return rnd.replies[mstage][TARGET]  # replay of what it already sent
    msg = finished.replies[mstage][TARGET]
    return dataclasses.replace(msg, session_id=rnd.server.session_id or rnd.server.plan_digest)


@pytest.mark.parametrize(("stage", "msg_type"), list(itertools.product(Stage, CLIENT_MESSAGE_TYPES)),
                         ids=lambda v: v.name if isinstance(v, Stage) else v.__name__)
def test_server_transition(stage: Stage, msg_type: type, finished: SimulatedRound) -> None:
    rnd = _round_at(stage)
    server = rnd.server
    assert server.stage is ServerStage(stage)
    before = server.pending()
    assert TARGET in before
    msg = _client_reply(rnd, finished, stage, msg_type)
    if msg_type.STAGE == stage:
        server.receive(msg)
        assert server.pending() == before - {TARGET}
        with pytest.raises(InvalidMessage, match="already answered"):
            server.receive(msg)  # a duplicate is refused
    else:
        with pytest.raises(InvalidMessage):
            server.receive(msg)
        assert server.pending() == before and server.stage is ServerStage(stage)


def test_server_after_done_refuses(finished: SimulatedRound) -> None:
    assert finished.server.stage is ServerStage.DONE
    with pytest.raises(InvalidMessage):
        finished.server.receive(finished.replies[Stage.UNMASK][TARGET])
    with pytest.raises(ProtocolAbort):
        finished.server.close_stage()
