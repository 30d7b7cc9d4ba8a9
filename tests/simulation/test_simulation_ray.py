"""The Ray engine against the local one: the same aggregate for the same seeds, one base model per worker,
and a worker that dies is a dropout. One local Ray (2 CPUs, loopback only, no dashboard) for the module."""

from __future__ import annotations

import logging
import os

import pytest
from sim_helpers import small_settings, spec_for

from securefed.simulation.driver import Simulation
from securefed.simulation.engine import LocalEngine

# Before Ray loads: no usage statistics, and the node binds the loopback address only.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
from securefed.simulation.ray_engine import RayEngine  # noqa: E402

# Ray starts processes (a local Ray, and one worker per actor that imports torch): seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             object_store_memory=128 * 1024 * 1024, _node_ip_address="127.0.0.1")
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(local_ray, sim_model):
    eng = RayEngine(spec_for(small_settings(sim_model)), workers=2)
    yield eng
    eng.close()


def test_two_ray_workers_and_the_local_engine_give_the_same_aggregate(workspace, engine, sim_model):
    settings = small_settings(sim_model, dropout_rate=0.2)
    local = Simulation(settings, workspace).run(LocalEngine(workspace))
    remote = Simulation(settings, workspace).run(engine)
    assert [r.aggregate_sha256 for r in remote] == [r.aggregate_sha256 for r in local]
    assert [(r.heldout_loss, r.epsilon_per_member, r.summed) for r in remote] == \
        [(r.heldout_loss, r.epsilon_per_member, r.summed) for r in local]
    assert remote[-1].engine == "ray" and local[-1].engine == "local"
    # Members share one read-only base model per worker process: 2 processes, 2 models, 12 member-rounds.
    assert len(set(engine.worker_pids())) == 2 and engine.models_loaded() == 2


def test_a_worker_that_dies_is_a_dropout_and_the_simulation_goes_on(workspace, engine, sim_model):
    settings = small_settings(sim_model)
    before = set(engine.worker_pids())
    records = Simulation(settings, workspace, faults={(1, 2): "exit"}).run(engine)
    first, second = records[1], records[2]
    assert first.lost == 1 and first.dropouts == 1 and first.summed == 5 and first.aborted is None
    assert first.epsilon_per_member[2] is None  # member 3's worker died before it released anything
    assert second.lost == 0 and second.summed == 6  # a new worker took the dead one's place
    after = set(engine.worker_pids())
    assert len(after) == 2 and len(after - before) == 1
