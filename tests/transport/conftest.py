"""Fixtures for the transfer tests: the tiny preset model, for the few that run the real daemons."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.federation import ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model"))
