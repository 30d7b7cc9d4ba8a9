"""One member on two gloo ranks (CPU): the same update and the same DP event as one process, and the
refusals of what this machine cannot run.

The two runs share one seeded, NOT secure, random source (``secure_mode = false``): rank 0 draws the
Poisson batch and the single noise vector in the same order as the single process, so the updates
agree to float tolerance even with noise on; the workers draw nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from securefed.distributed.checks import rank_layout
from securefed.distributed.group import RankGroup
from securefed.errors import ConfigError
from securefed.heterogeneous.config import CapacitySettings
from securefed.heterogeneous.partial import load_for_training
from securefed.privacy.events import event_from_training
from securefed.strategies import ControlCorrection
from securefed.training.adapter import adapter_layout, adapter_to_vector, load_adapter_vector
from securefed.training.config import LocalTrainingSettings, LoraSettings, ModelSettings
from securefed.training.data import demo_client_dataset
from securefed.training.dp import train_local
from securefed.training.loss import SequenceLoss
from securefed.training.memory import plan_for_checkpoint

LORA = LoraSettings(rank=4)
SETTINGS = ModelSettings(device="cpu", dtype="fp32", processes=2)
# clip well below the per-example gradient norms so that clipping binds; sigma > 0 so that noise is on
TRAINING = LocalTrainingSettings(batch_size=6, steps=3, max_seq_len=16, clip_norm=0.05, learning_rate=0.5,
                                 clipping="hooks", secure_mode=False)
SIGMA = 0.8


@pytest.fixture(scope="module")
def member(tiny_model):
    plan = plan_for_checkpoint(tiny_model, SETTINGS, LORA, logical_batch=TRAINING.batch_size, seq_len=16)
    loaded, _ = load_for_training(tiny_model, SETTINGS, LORA, plan, CapacitySettings(), "")
    layout = adapter_layout(loaded.model)
    data = demo_client_dataset(loaded.tokenizer, 0, 3, 16, kind=loaded.kind)
    ranks = RankGroup(rank_layout(SETTINGS, TRAINING.batch_size, cores=2), model_dir=tiny_model, model=SETTINGS,
                      lora=LORA, plan=plan, capacity=CapacitySettings(), layout_json=layout.to_json())
    yield loaded, layout, data, ranks
    ranks.close()


def _event(result):
    e = event_from_training(result, client_id="m", round_id=1, delta=1e-5, accountant="rdp", config_hash="0" * 64,
                            timestamp="2026-01-01T00:00:00.000000Z")
    return e


@pytest.mark.slow  # starts two gloo rank processes
@pytest.mark.parametrize("with_correction", [False, True], ids=["fedavg", "scaffold-correction"])
def test_distributed_two_ranks_equal_one_process(member, with_correction):
    loaded, layout, data, ranks = member
    model, loss = loaded.model, SequenceLoss(loaded.model, loaded.kind)
    start = (np.random.default_rng(0).normal(size=layout.total_size) * 0.05).astype(np.float32)  # not secret
    correction = (ControlCorrection(torch.full((layout.total_size,), 0.01)) if with_correction else None)
    results = []
    for run in ("single", "ranks"):
        load_adapter_vector(model, start, layout)
        torch.manual_seed(11)
        if run == "single":
            results.append(train_local(model, data, TRAINING, SIGMA, loss=loss, strategy_state=correction))
        else:
            results.append(ranks.train(model, data, TRAINING, SIGMA, attempt=1, loss=loss, strategy_state=correction,
                                       correction=correction))
            assert ranks.up and len(ranks.procs) == 1  # the worker stays for the next attempt
    single, two = results
    assert np.abs(single.delta).max() > 1e-4  # it trained
    np.testing.assert_allclose(two.delta, single.delta, rtol=1e-5, atol=1e-7)
    assert two.train_loss == pytest.approx(single.train_loss, rel=1e-6)
    # the mechanism is the single process's: the same DP event goes to the ledger
    assert _event(two) == _event(single)
    assert (two.steps, two.sample_rate, two.noise_multiplier, two.clip_norm) == (3, 6 / len(data), SIGMA, 0.05)
    after, _ = adapter_to_vector(model)
    np.testing.assert_array_equal(after - start, two.delta)


def test_distributed_refuses_what_this_machine_cannot_run():
    layout = rank_layout(ModelSettings(device="cpu", processes=2), 8, cores=2, threads=2)
    assert (layout.backend, layout.devices, layout.threads) == ("gloo", ("cpu", "cpu"), 1)
    cases = [
        (dict(processes=3), dict(cores=2), "only|has 2 CPU core"),
        (dict(processes=2, backend="nccl"), dict(cores=4), "nccl"),
        (dict(processes=2), dict(cores=4, gloo=False), "no gloo"),
        (dict(processes=4), dict(cores=8), "smaller than the number of ranks"),
    ]
    for settings, probe, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            rank_layout(ModelSettings(device="cpu", **settings), 3, **probe)
        msg = str(info.value)
        assert "\n" not in msg and ("processes" in msg or "backend" in msg)


def test_distributed_client_check_names_processes_in_one_line(tmp_path, tiny_model, capsys):
    from securefed.client.preflight import check_client
    from securefed.federation import provision

    p = provision(tmp_path, 3, mode="secagg", model_dir=tiny_model, client={"model": {"processes": 1024}})
    code = check_client(p.client_tomls["member-1"]).report("client")
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "processes" in ln]
    assert code == 2 and len(lines) == 1 and "FAIL" in lines[0] and "lower processes" in lines[0], out


def test_distributed_worker_holds_no_member_secrets():
    """A worker rank never imports what talks to the server, signs or writes the ledger."""
    pkg = Path(__file__).resolve().parents[2] / "securefed" / "distributed"
    forbidden = ("securefed.client", "securefed.server", "securefed.transport", "securefed.privacy.ledger",
                 "securefed.crypto", "grpc")
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith(forbidden)], (path.name, names)
