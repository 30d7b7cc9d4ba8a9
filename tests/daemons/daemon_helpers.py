"""Helpers shared by the daemon tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import numpy as np

from securefed.client.hooks import MemberHooks
from securefed.errors import ProtocolAbort

# These federations of three trust their members (max_colluding_members = 0 on both sides), so that
# t = 2 of 3 leaves room for a decline or a dropout; with the default (one colluder) three members need
# t = 3. The colluder bound has its own daemon test (tests/adversarial/test_adv_secagg_colluders.py).
TRUSTING = {"max_colluding_members": 0}

# Fast but real: DP-SGD with Opacus on the tiny model, 2 steps a round, short stage deadlines.
FAST_CLIENT = {
    # Noise is calibrated once for planned_rounds releases; crash and abort tests re-run rounds.
    "client": {"planned_rounds": 4, **TRUSTING},
    "training": {"steps": 2, "batch_size": 8, "max_seq_len": 32, "learning_rate": 0.5, "clipping": "hooks"},
    "connection": {"poll_wait_s": 1.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "give_up_after_s": 90.0},
}


def fast_server(**deadlines) -> dict:
    # Stages end as soon as everyone answered; generous deadlines only matter on a loaded machine.
    d = {"join_s": 90.0, "training_s": 90.0, "share_keys_s": 15.0, "masked_input_s": 15.0, "unmask_s": 15.0,
         "decrypt_s": 20.0, "poll_s": 1.0}
    d.update(deadlines)
    return {"deadlines": d, "federation": dict(TRUSTING)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GoSilent(ProtocolAbort):
    """Raised from a test hook: the member leaves the session without telling the server."""


class Recorder(MemberHooks):
    """Watches one member: what it released (by attempt), its outcomes; ``at`` runs a test's fault hook."""

    def __init__(self, at: Callable[[str, int], None] | None = None) -> None:
        self._at = at
        self.released_payloads: dict[int, np.ndarray] = {}
        self.history: list[dict] = []

    def at(self, point: str, attempt: int) -> None:
        if self._at is not None:
            self._at(point, attempt)

    def released(self, attempt: int, payload: np.ndarray) -> None:
        self.released_payloads[attempt] = np.array(payload, dtype=np.float64)

    def outcome(self, attempt: int, outcome: str, **fields: object) -> None:
        self.history.append({"attempt": attempt, "outcome": outcome, **fields})

    @property
    def declined(self) -> list[dict]:
        return [h for h in self.history if h["outcome"] == "declined"]


def recorders(names, **at: Callable[[str, int], None]) -> dict[str, Recorder]:
    """One Recorder per member; ``at={"member-1": fn}`` gives a member a fault hook."""
    return {n: Recorder(at.get(n)) for n in names}
