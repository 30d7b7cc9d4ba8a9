"""The member's dataset and ledger: the context each release records, one ledger per dataset found in the
ledger directory, an old ledger never left behind silently; and the torch threads it picks itself."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from securefed.client.cli import choose_torch_threads
from securefed.client.config import ClientConfig
from securefed.client.dataset import MemberDataset, event_context, ledger_dir, member_dataset, open_ledger
from securefed.config import parse_model
from securefed.crypto.keys import IdentityKeyPair
from securefed.errors import ConfigError
from securefed.privacy.budget import PrivacyBudget
from securefed.privacy.events import PrivacyUnit
from securefed.privacy.ledger import LEDGER_VERSION, Ledger
from securefed.protocol.plan import seal_plan
from securefed.transport._generated import federation_pb2 as pb


def _config(tmp_path: Path, **client) -> ClientConfig:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "one record"}\n{"text": "another"}\n')
    return parse_model(ClientConfig, {
        "client": {"name": "alice", "server": "fl.example.org:50051", "credentials_dir": str(tmp_path / "pki"),
                   "state_dir": str(tmp_path / "state"), "base_model_dir": str(tmp_path / "m"),
                   "ledger_dir": str(tmp_path / "ledgers"), **client},
        "data": {"path": str(data)},
        "privacy": {"target_epsilon": 8.0, "delta": 1e-5},
    })


def test_each_release_records_the_plan_it_accepted(tmp_path: Path) -> None:
    plan = seal_plan(pb.RoundPlan(round=7, global_adapter_sha256=b"\x01" * 32, mode=pb.AGGREGATION_MODE_CKKS,
                                  vector_length=4, secagg=pb.SecAggParams(threshold=3), federation_id="fed-x",
                                  federation_round=4, cohort=[pb.CohortMember(client_id=c) for c in "abcd"]))
    ctx = event_context(plan, MemberDataset("ab" * 32, PrivacyUnit.RECORD), 1234)
    assert (ctx.federation_id, ctx.federation_round, ctx.mode, ctx.cohort_size, ctx.threshold) == ("fed-x", 4, "ckks", 4, 3)
    assert ctx.plan_sha256 == plan.plan_sha256.hex() and ctx.dataset_size == 1234 and ctx.dataset_fingerprint == "ab" * 32


def test_the_ledger_is_found_by_dataset_in_the_ledger_dir(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    ident = IdentityKeyPair.generate()
    ds = member_dataset(cfg)
    assert ds.unit is PrivacyUnit.RECORD and (tmp_path / "ledgers" / "dataset.salt").is_file()
    with open_ledger(cfg, ident, ds) as led:
        assert led.path.parent == tmp_path / "ledgers" and led.header.version == LEDGER_VERSION
        assert led.header.dataset == ds.fingerprint
    # Another federation's config, another state_dir, the same ledger_dir and data: the same ledger.
    other = cfg.model_copy(update={"client": cfg.client.model_copy(update={"state_dir": tmp_path / "fed2"})})
    assert member_dataset(other) == ds
    with open_ledger(other, ident, member_dataset(other)) as led2:
        assert led2.path == led.path


def test_an_old_default_ledger_is_never_left_behind_silently(tmp_path: Path, caplog) -> None:
    cfg = _config(tmp_path)
    ident = IdentityKeyPair.generate()
    old = tmp_path / "state" / "ledger.sqlite"
    Ledger.create(old, ident, client_id="alice", budget=PrivacyBudget(target_epsilon=8.0, delta=1e-5)).close()
    with pytest.raises(ConfigError, match="set client.ledger_path"):
        open_ledger(cfg, ident, member_dataset(cfg))
    kept = _config(tmp_path, ledger_path=str(old), ledger_dir=None)
    with caplog.at_level(logging.WARNING, logger="securefed"), open_ledger(kept, ident, member_dataset(kept)) as led:
        assert led.path == old and led.header.version == 1  # kept as it is: its spend keeps counting
    assert any("format 1" in r.getMessage() for r in caplog.records)
    assert ledger_dir(kept) == old.parent


def test_members_pick_torch_threads_themselves(tmp_path: Path) -> None:
    remote = _config(tmp_path)
    local = _config(tmp_path, server="127.0.0.1:50551")
    assert choose_torch_threads(remote, 16, {}) is None  # its own machine: torch uses every core
    assert choose_torch_threads(local, 16, {}) == 4  # a one-machine trial: share with the server and others
    assert choose_torch_threads(_config(tmp_path, server="localhost:1"), 2, {}) == 1
    assert choose_torch_threads(local, 16, {"OMP_NUM_THREADS": "2"}) is None  # the environment wins
    assert choose_torch_threads(_config(tmp_path, server="127.0.0.1:1", torch_threads=6), 16, {}) == 6
