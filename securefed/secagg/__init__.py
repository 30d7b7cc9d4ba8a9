"""Secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020) as pure state machines.

The safe API: ``SecAggParams`` (refuses unsafe thresholds and overflowing fixed-point ranges),
``SecAggClient.handle(msg) -> reply``, ``SecAggServer.receive(msg)`` / ``close_stage()``, the
message dataclasses, and ``simulate_round`` (in-memory driver). The protocol is written down in
``protocols/secagg.md``. Raw primitives are in ``securefed.crypto`` and are not meant for callers.
"""

from securefed.secagg.client import ClientStats, SecAggClient, ShareKind
from securefed.secagg.messages import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    AdvertisedKeys,
    AdvertiseKeys,
    ClientMessage,
    ClientStage,
    CohortMember,
    ConsistencySignature,
    EncryptedShare,
    InboxKey,
    KeyBroadcast,
    MaskedInput,
    MaskedWith,
    RevealedShare,
    RoundSetup,
    ServerMessage,
    ServerStage,
    ShareDelivery,
    ShareComplaint,
    ShareKeys,
    SignedSurvivors,
    Stage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from securefed.secagg.params import (
    DEFAULT_MAX_COLLUDERS,
    SecAggParams,
    required_threshold,
    suggest_neighbour_degree,
    suggest_params,
    suggest_threshold,
)
from securefed.secagg.server import AggregateResult, SecAggServer
from securefed.secagg.session import NeighbourGraph, plan_digest, session_id
from securefed.secagg.simulation import (
    OnClientAbort,
    SimulatedRound,
    SimulationOutcome,
    make_identities,
    simulate_round,
)

__all__ = [
    "CLIENT_MESSAGE_TYPES", "DEFAULT_MAX_COLLUDERS", "SERVER_MESSAGE_TYPES", "AdvertiseKeys", "AdvertisedKeys", "AggregateResult",
    "ClientMessage", "ClientStage", "ClientStats", "CohortMember", "ConsistencySignature", "EncryptedShare", "InboxKey",
    "KeyBroadcast", "MaskedInput", "MaskedWith", "NeighbourGraph", "OnClientAbort", "RevealedShare", "RoundSetup",
    "SecAggClient", "SecAggParams", "SecAggServer", "ServerMessage", "ServerStage", "ShareComplaint", "ShareDelivery", "ShareKeys",
    "ShareKind", "SignedSurvivors", "SimulatedRound", "SimulationOutcome", "Stage", "SurvivorList", "UnmaskRequest",
    "UnmaskResponse", "make_identities", "plan_digest", "required_threshold", "session_id", "simulate_round", "suggest_neighbour_degree",
    "suggest_params", "suggest_threshold",
]
