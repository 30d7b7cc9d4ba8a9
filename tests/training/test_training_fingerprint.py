"""The base-model fingerprint: streamed from the safetensors files, canonical, cached, and sensitive to
a single weight."""

from __future__ import annotations

import json
import shutil
import struct
import time

import pytest
from family_zoo import build_family
from safetensors.torch import load_file, save_file

from securefed.errors import ModelError
from securefed.training import fingerprint as fpm
from securefed.training.fingerprint import base_fingerprint, cache_path, compute_fingerprint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_family("llama", tmp_path_factory.mktemp("fp") / "llama")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_fingerprint_is_deterministic_and_independent_of_file_layout(ckpt, tmp_path):
    a = compute_fingerprint(ckpt)
    assert len(a) == 64 and a == compute_fingerprint(_copy(ckpt, tmp_path / "copy"))
    # The same tensors in another order inside the file, and split into shards, hash the same.
    tensors = load_file(str(ckpt / "model.safetensors"))
    reordered = _copy(ckpt, tmp_path / "reordered")
    save_file(dict(reversed(list(tensors.items()))), str(reordered / "model.safetensors"))
    assert compute_fingerprint(reordered) == a
    sharded = tmp_path / "sharded"
    build_family("llama", sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists() and len(list(sharded.glob("*.safetensors"))) > 2
    assert compute_fingerprint(sharded) == a


def test_one_weight_value_changes_the_fingerprint_and_the_layout_does_not_see_it(ckpt, tmp_path):
    a = compute_fingerprint(ckpt)
    other = _copy(ckpt, tmp_path / "other")
    tensors = load_file(str(other / "model.safetensors"))
    name = sorted(tensors)[3]
    t = tensors[name].clone()
    t.view(-1)[0] = t.view(-1)[0] + 1e-3
    tensors[name] = t
    save_file(tensors, str(other / "model.safetensors"))
    assert compute_fingerprint(other) != a
    # Same family and shapes, other random weights (Llama vs a retrained Llama): different too.
    assert compute_fingerprint(build_family("llama", tmp_path / "seed1", seed=1)) != a
    # config.json is part of the model (rope_theta changes what it computes); save bookkeeping is not.
    cfg = json.loads((other / "config.json").read_text())
    cfg["transformers_version"] = "0.0.0"
    (other / "config.json").write_text(json.dumps(cfg))
    tensors[name] = load_file(str(ckpt / "model.safetensors"))[name]
    save_file(tensors, str(other / "model.safetensors"))
    assert compute_fingerprint(other) == a
    cfg["rope_theta"] = 1234.0
    (other / "config.json").write_text(json.dumps(cfg))
    assert compute_fingerprint(other) != a


def test_streams_the_files_without_loading_a_model(ckpt, monkeypatch):
    import safetensors.torch
    import torch

    def boom(*a, **k):
        raise AssertionError("the fingerprint must not load tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(torch, "load", boom)
    seen = []
    fp = compute_fingerprint(ckpt, progress=lambda done, total: seen.append((done, total)))
    assert len(fp) == 64 and seen and seen[-1][0] == seen[-1][1] == sum(
        e - b for _, _, b, e in fpm._header(ckpt / "model.safetensors")[1].values())


def test_cache_is_used_and_invalidated_when_a_file_changes(ckpt, tmp_path, monkeypatch):
    d = _copy(ckpt, tmp_path / "m")
    cache = tmp_path / "state"
    monkeypatch.setattr(fpm, "RACY_NS", 0)  # the copy was just written: allow caching it in this test
    first = base_fingerprint(d, cache_dir=cache)
    assert cache_path(cache, d).exists()
    calls = []
    real = fpm.compute_fingerprint
    monkeypatch.setattr(fpm, "compute_fingerprint", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert base_fingerprint(d, cache_dir=cache) == first and calls == []  # from the cache
    # Rewrite one weight in place, same size: the cache entry no longer applies.
    time.sleep(0.05)  # past the filesystem's timestamp tick (RACY_NS guards same-tick rewrites in real use)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's last value
    (d / "model.safetensors").write_bytes(bytes(data))
    assert base_fingerprint(d, cache_dir=cache) != first and calls == [1]
    # Nothing was written into the model directory.
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in ckpt.iterdir())


def test_racy_files_are_not_cached(ckpt, tmp_path):
    d = _copy(ckpt, tmp_path / "fresh")  # modified just now: within RACY_NS
    base_fingerprint(d, cache_dir=tmp_path / "state")
    assert not cache_path(tmp_path / "state", d).exists()


def test_damaged_checkpoints_are_refused_in_one_line(ckpt, tmp_path):
    trunc = _copy(ckpt, tmp_path / "trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(ModelError, match="truncated"):
        compute_fingerprint(trunc)
    (trunc / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    with pytest.raises(ModelError, match="not a readable safetensors"):
        compute_fingerprint(trunc)
    sharded = build_family("llama", tmp_path / "sharded", max_shard_size="20KB")
    sorted(sharded.glob("model-*.safetensors"))[1].unlink()
    with pytest.raises(ModelError, match="missing"):
        compute_fingerprint(sharded)
    pickled = tmp_path / "bin"
    pickled.mkdir()
    shutil.copy(ckpt / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="safetensors"):
        compute_fingerprint(pickled)
