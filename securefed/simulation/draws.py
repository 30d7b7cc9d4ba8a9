"""The simulation's own random choices, seeded so that a run can be repeated: which members a round
samples, which of them drop out and at which stage. None of it is secret (it is the experiment's design,
not a member's noise), so numpy's seeded generator is the right tool here; DP noise never comes from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.secagg.messages import Stage
from securefed.simulation.aggregation import DROP_STAGES


@dataclass(frozen=True)
class RoundDraw:
    cohort: tuple[int, ...]  # sampled members, sorted
    drops: dict[int, Stage]  # member -> the stage it goes silent at


def draw_round(seed: int, round_id: int, members: int, cohort_size: int, dropout_rate: float) -> RoundDraw:
    """A uniformly sampled cohort of ``cohort_size`` and its dropouts (each member with ``dropout_rate``,
    at a uniformly chosen protocol stage). Depends only on its arguments."""
    rng = np.random.default_rng([seed, round_id])  # not secret: the experiment's sampling
    cohort = tuple(sorted(int(m) for m in rng.choice(members, size=cohort_size, replace=False)))
    dropping = rng.random(len(cohort)) < dropout_rate
    stages = rng.integers(0, len(DROP_STAGES), size=len(cohort))
    return RoundDraw(cohort, {m: DROP_STAGES[int(s)] for m, d, s in zip(cohort, dropping, stages) if d})
