"""Fixtures for the simulation tests: a tiny untrained preset (fast to build) and one workspace per module."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_helpers import small_settings, spec_for

from securefed.simulation.member import Workspace
from securefed.training.preset import build_tiny_model


@pytest.fixture(scope="session")
def sim_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("sim-model") / "tiny", pretrain=False)


@pytest.fixture(scope="module")
def workspace(sim_model) -> Workspace:
    """One workspace (one base model) for every member of a test module's local runs."""
    return Workspace(spec_for(small_settings(sim_model)))
