"""The simulation's coordinator: rounds of sampled cohorts over an engine, summed by the real aggregation.

``Simulation(settings, workspace).run(engine)`` returns one ``RoundRecord`` per round and epsilon
(round 0 is the global adapter before training). Per round: draw the cohort and its dropouts
(``draws``), hand every sampled member's task to the engine (members refuse a round their budget
cannot pay for: ``declined``), sum what was released (``aggregation``), apply the strategy's server
update, evaluate the new global adapter on the held-out set. Each member's epsilon is derived from its
own DP events by its accountant, never stored. ``check()`` refuses, before anything trains, what no round
could survive: a cohort below the secure-aggregation minimum, a delta or epsilon no member can meet.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np

from securefed.errors import ConfigError
from securefed.privacy.accountants import accountant_class, mechanism_of
from securefed.privacy.budget import check_delta_for_dataset, suggest_delta
from securefed.privacy.events import DpEvent
from securefed.secagg.messages import Stage
from securefed.simulation.aggregation import CkksSummer, SumResult, plaintext_sum, secagg_sum
from securefed.simulation.draws import draw_round
from securefed.simulation.engine import Engine, ProgressLine
from securefed.simulation.member import MemberOutcome, MemberTask, RoundShared, Workspace
from securefed.simulation.records import RoundRecord
from securefed.simulation.settings import MIN_SECURE_COHORT, SimulationSettings
from securefed.training.dp import plan_steps

Say = Callable[[str], None]
# Tests make a worker die on a given (round, member).
Faults = dict[tuple[int, int], str]


class Simulation:
    def __init__(self, settings: SimulationSettings, workspace: Workspace, *, say: Say = lambda line: None,
                 faults: Faults | None = None) -> None:
        self.s = settings
        self.ws = workspace
        self.engine: Engine | None = None
        self.say = say
        self.faults = dict(faults or {})
        self.seed_key = hashlib.sha256(b"securefed/simulate/seed/v1" + settings.seed.to_bytes(8, "big")).digest()
        self._ckks: CkksSummer | None = None
        self._eps_cache: dict[tuple, float] = {}

    # --- refusals before anything trains ----------------------------------------------------------
    def check(self) -> None:
        """``ConfigError`` (one line, exit 2) for a run no round could complete."""
        s, sizes = self.s, self.ws.sizes
        if s.mode != "plaintext" and s.cohort_size < MIN_SECURE_COHORT:
            raise ConfigError(
                f"secure aggregation needs at least {MIN_SECURE_COHORT} members per round (a sum of two reveals each "
                f"to the other); this run samples {s.cohort_size} of {s.members}: raise --members or --cohort-fraction, "
                "or use --mode plaintext")
        if s.reproducible and s.mode == "ckks":
            raise ConfigError("--reproducible needs --mode secagg or plaintext: SEAL's encryption noise in --mode ckks "
                              "cannot be seeded")
        smallest = min(sizes)
        if any(e is not None for e in s.epsilons):
            try:
                check_delta_for_dataset(s.delta, max(sizes))
            except ConfigError:
                raise ConfigError(f"--delta {s.delta:g} is not below 1/{max(sizes)} (the largest member holds "
                                  f"{max(sizes)} examples); use --delta {suggest_delta(max(sizes)):.1g}") from None
        q, steps = plan_steps(s.training, smallest)
        for eps in s.epsilons:
            if eps is None:
                continue
            probe = MemberTask(sizes.index(smallest), 0, eps, s.delta, s.accountant, s.planned_releases)
            try:
                self.ws.noise_multiplier(probe, q, steps)
            except ConfigError as exc:
                raise ConfigError(f"--epsilon {eps:g}: {exc} (here: --rounds/--member-rounds, --steps, --batch-size)"
                                  ) from None

    # --- the run ------------------------------------------------------------------------------------
    def run(self, engine: Engine) -> list[RoundRecord]:
        self.check()
        self.engine = engine
        records: list[RoundRecord] = []
        for eps in self.s.epsilons:
            records += self._run_epsilon(eps)
        return records

    def _run_epsilon(self, eps: float | None) -> list[RoundRecord]:
        s = self.s
        events: dict[int, list[DpEvent]] = {m: [] for m in range(s.members)}
        client_states: dict[int, object] = {}
        sigmas: list[float] = []  # this round's calibrated noise multipliers
        global_vec = self.ws.initial.astype(np.float32)
        server_state = self.ws.strategy.initial_server_state()
        loss, ppl, metric = self.ws.evaluate(global_vec)
        out = [self._record(eps, 0, None, None, events, sigmas, loss, ppl, metric, global_vec, 0.0, 0.0)]
        self.say(out[-1].line())
        for r in range(1, s.rounds + 1):
            t0 = time.perf_counter()
            draw = draw_round(s.seed, r, s.members, s.cohort_size, s.dropout_rate)
            # Members that go silent before the masked-input stage release nothing: they need not train.
            early = {m for m, st in draw.drops.items() if st < Stage.MASKED_INPUT}
            tasks = [self._task(eps, r, m, events[m], client_states.get(m)) for m in draw.cohort if m not in early]
            label = f"[{'non-private' if eps is None else f'eps {eps:g}'}] round {r}"
            shared = RoundShared(r, global_vec, server_state)
            outcomes = {o.member: o for o in self.engine.run_round(shared, tasks, ProgressLine(self.say, label))}
            train_s = time.perf_counter() - t0
            declined = {m for m, o in outcomes.items() if o.status == "declined"}
            cohort = [m for m in draw.cohort if m not in declined]
            drops = {m: st for m, st in draw.drops.items() if m not in declined}
            drops.update({m: Stage.ADVERTISE_KEYS for m, o in outcomes.items() if o.status == "lost"})
            payloads = {m: o.payload for m, o in outcomes.items() if o.status == "trained"}
            agg = self._sum(cohort, payloads, drops, r)
            sigmas = [o.noise_multiplier or 0.0 for o in outcomes.values() if o.status == "trained"]
            for m, o in outcomes.items():
                # Released, or may have been: a member that stops at the masked-input stage may have crashed
                # after its ledger append, so it counts (the safe side).
                if o.event is not None and drops.get(m, Stage.UNMASK) >= Stage.MASKED_INPUT:
                    events[m].append(o.event)
            if agg.values is not None:
                update = self.ws.strategy.server_apply(global_vec, agg.values, len(agg.contributors), server_state)
                global_vec, server_state = update.global_vec, update.server_state
                for m in agg.contributors:
                    client_states[m] = outcomes[m].client_state
            loss, ppl, metric = self.ws.evaluate(global_vec)
            rec = self._record(eps, r, draw, (outcomes, drops, agg), events, sigmas, loss, ppl, metric, global_vec,
                               time.perf_counter() - t0, train_s)
            out.append(rec)
            self.say(rec.line())
        return out

    def _task(self, eps: float | None, r: int, m: int, prior: list[DpEvent], client_state) -> MemberTask:
        s = self.s
        key = None
        if s.reproducible:
            key = hashlib.sha256(b"securefed/simulate/noise/v1" + self.seed_key + r.to_bytes(8, "big")
                                 + m.to_bytes(8, "big")).digest()
        return MemberTask(m, r, eps, s.delta, s.accountant, s.planned_releases, tuple(prior), key,
                          client_state if client_state is not None else self.ws.strategy.initial_client_state(),
                          self.faults.get((r, m)))

    def _sum(self, cohort: list[int], payloads: dict[int, np.ndarray], drops: dict[int, Stage], r: int) -> SumResult:
        s = self.s
        if s.mode != "plaintext" and len(cohort) < MIN_SECURE_COHORT:
            return SumResult(None, (), MIN_SECURE_COHORT, f"only {len(cohort)} members accepted the round")
        payload_length = self.ws.strategy.payload_size
        if s.mode == "secagg":
            return secagg_sum(cohort, payloads, drops, length=payload_length, bound=self.ws.strategy.payload_bound(),
                              max_colluders=s.max_colluders, round_id=r,
                              seed_key=self.seed_key if s.reproducible else None)
        if s.mode == "ckks":
            self._ckks = self._ckks or CkksSummer()
            return self._ckks.sum(cohort, payloads, drops, length=payload_length, bound=self.ws.strategy.payload_bound(),
                                  max_colluders=s.max_colluders, round_id=r)
        return plaintext_sum(cohort, payloads, drops)

    # --- reporting ----------------------------------------------------------------------------------
    def _epsilon(self, history: list[DpEvent]) -> float | None:
        if not history:
            return None
        mechs = tuple(mechanism_of(e) for e in history)
        if mechs not in self._eps_cache:
            self._eps_cache[mechs] = accountant_class(self.s.accountant).epsilon_of_mechanisms(list(mechs), self.s.delta)
        return self._eps_cache[mechs]

    def _record(self, eps, r, draw, round_out, events, sigmas, loss, ppl, metric, global_vec, seconds,
                train_s) -> RoundRecord:
        s = self.s
        spent = [self._epsilon(events[m]) for m in range(s.members)]
        known = [e for e in spent if e is not None]
        outcomes: dict[int, MemberOutcome]
        outcomes, drops, agg = round_out if round_out else ({}, {}, SumResult(None, (), 0))
        lost = sum(1 for o in outcomes.values() if o.status == "lost")
        return RoundRecord(
            epsilon=eps, round=r, members=s.members, cohort=len(draw.cohort) if draw else 0,
            trained=sum(1 for o in outcomes.values() if o.status == "trained"),
            declined=sum(1 for o in outcomes.values() if o.status == "declined"),
            dropouts=len(drops), lost=lost, summed=len(agg.contributors), threshold=agg.threshold,
            aborted=agg.aborted, heldout_loss=round(loss, 6), heldout_ppl=round(ppl, 4),
            metric={k: round(v, 6) for k, v in metric.items()},
            epsilon_spent_max=round(max(known), 6) if known else None,
            epsilon_spent_mean=round(sum(known) / len(known), 6) if known else None,
            epsilon_per_member=[None if e is None else round(e, 6) for e in spent],
            noise_multiplier=round(max(sigmas), 6) if sigmas else None,
            seconds=round(seconds, 3), train_seconds=round(train_s, 3), aggregate_seconds=round(agg.seconds, 3),
            server_seconds=round(agg.server_seconds, 3),
            aggregate_sha256=hashlib.sha256(np.ascontiguousarray(global_vec, dtype=np.float32).tobytes()).hexdigest(),
            engine=self.engine.name, mode=s.mode, noise=s.noise, seed=s.seed,
        )

