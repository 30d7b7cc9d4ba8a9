"""What a simulation reports after each round: one flat record (``--json`` prints an array of them) and
the line the terminal shows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoundRecord:
    epsilon: float | None  # the members' target (None: the non-private baseline)
    round: int  # 0: before any training
    members: int
    cohort: int  # members sampled
    trained: int  # members that trained and were not dropped before masking
    declined: int  # members whose budget guard refused the round
    dropouts: int  # injected dropouts, and members whose worker died
    lost: int  # of the dropouts: members whose worker died or whose training failed
    summed: int  # updates in the sum
    threshold: int
    aborted: str | None
    heldout_loss: float
    heldout_ppl: float
    metric: dict[str, float]
    epsilon_spent_max: float | None
    epsilon_spent_mean: float | None
    epsilon_per_member: list[float | None] = field(repr=False)  # None: never released (or no DP)
    noise_multiplier: float | None  # the members' calibrated sigma (max over those that trained)
    seconds: float
    train_seconds: float
    aggregate_seconds: float
    server_seconds: float  # of aggregate_seconds: the server's own part
    aggregate_sha256: str  # of the global adapter after the round (float32 bytes)
    engine: str
    mode: str
    noise: str  # "csprng" or "seeded" (reproducible mode: not a privacy guarantee)
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}

    def line(self) -> str:
        eps = "non-private" if self.epsilon is None else f"eps {self.epsilon:g}"
        spent = "" if self.epsilon_spent_max is None else f"  spent max {self.epsilon_spent_max:.3f}"
        metric = "".join(f"  {k} {v:.4f}" for k, v in self.metric.items())
        if self.round == 0:
            return f"[{eps}] round 0 (before training): held-out loss {self.heldout_loss:.4f} ppl {self.heldout_ppl:.3f}{metric}"
        what = f"aborted ({self.aborted})" if self.aborted else f"{self.summed} summed (t = {self.threshold})"
        return (f"[{eps}] round {self.round}: cohort {self.cohort}/{self.members}, trained {self.trained}, "
                f"declined {self.declined}, dropouts {self.dropouts}, {what}: held-out loss {self.heldout_loss:.4f} "
                f"ppl {self.heldout_ppl:.3f}{metric}{spent}  {self.seconds:.1f} s")


def _json_number(v: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_number(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_number(x) for k, x in v.items()}
    return v
