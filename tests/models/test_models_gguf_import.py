"""``securefed model import-gguf`` / ``model get``: a GGUF becomes a checkpoint directory that loads like
any other and computes exactly what the GGUF computes; reruns are no-ops; anything else is refused in
one line and leaves nothing behind."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import stat
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers.modeling_utils as modeling_utils
from model_helpers import build_tiny_llama
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from securefed.cli import main
from securefed.errors import ModelError
from securefed.export.gguf_file import write_gguf
from securefed.models import sources
from securefed.models.gguf_import import MANIFEST, import_gguf, probe_ids
from securefed.training.model import load_model


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    """A GGUF written from a tiny Llama (f32, so the conversion can be compared bit for bit)."""
    root = tmp_path_factory.mktemp("gguf")
    ckpt = build_tiny_llama(root / "ckpt")
    loaded = load_model(ckpt)
    return ckpt, write_gguf(loaded.model, loaded.tokenizer, root / "tiny-f32.gguf", ftype="f32", name="tiny test llama")


@pytest.fixture(scope="module")
def imported(gguf_path, tmp_path_factory):
    ckpt, path = gguf_path
    out = tmp_path_factory.mktemp("imported") / "model"
    old = os.umask(0o077)
    try:
        result = import_gguf(path, out, say=lambda _: None)
    finally:
        os.umask(old)
    return ckpt, path, out, result


def test_the_checkpoint_holds_the_gguf_tensors_and_loads_like_any_member_base(imported):
    ckpt, _, out, result = imported
    assert result.converted and result.probe_tokens > 0
    want, got = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(want) and all(torch.equal(want[k], got[k]) for k in want)
    original, converted = load_model(ckpt), load_model(out)
    ids = torch.tensor([probe_ids(original.tokenizer)])
    with torch.no_grad():
        assert torch.equal(original.model(input_ids=ids).logits, converted.model(input_ids=ids).logits)
    assert converted.tokenizer.chat_template == original.tokenizer.chat_template
    assert (out / "generation_config.json").is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["fingerprint"] == result.fingerprint
    assert manifest["source_sha256"] == hashlib.sha256(imported[1].read_bytes()).hexdigest()


def test_the_tokenizer_has_no_token_the_model_cannot_embed(imported):
    """transformers' GGUF tokenizer invents ``<|endoftext|>`` for a vocabulary without it (the negative
    control); the written checkpoint's tokenizer has exactly the file's tokens."""
    _, path, out, _ = imported
    raw = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert len(raw) == 513 and "<|endoftext|>" in raw.get_vocab()
    assert len(load_model(out).tokenizer) == 512


def test_a_second_run_checks_and_does_nothing_and_a_changed_checkpoint_is_refused(imported, tmp_path):
    _, path, out, first = imported
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = import_gguf(path, out, say=lambda _: None)
    assert not again.converted and again.fingerprint == first.fingerprint
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    tensors = load_file(str(tampered / "model.safetensors"))
    tensors["model.norm.weight"][0] += 1.0
    save_file(tensors, str(tampered / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="changed since securefed wrote them"):
        import_gguf(path, tampered, say=lambda _: None)


def test_files_are_readable_by_the_daemons_users_whatever_the_umask(imported):
    out = imported[2]
    for p in [out, *out.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


def _gguf_with_architecture(path: Path, arch: str) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("not loadable")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_refusals_are_one_line_and_leave_nothing(tmp_path, capsys, imported):
    bad = _gguf_with_architecture(tmp_path / "rwkv.gguf", "rwkv6")
    notgguf = tmp_path / "weights.bin"
    notgguf.write_bytes(b"\x00" * 64)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    cases = [(bad, tmp_path / "o1", "architecture 'rwkv6' is not one transformers"),
             (notgguf, tmp_path / "o2", "not a readable GGUF file"),
             (imported[1], foreign, "was not written by securefed")]
    for src, out, why in cases:
        assert main(["model", "import-gguf", str(src), "--out", str(out)]) == ModelError.exit_code
        err = capsys.readouterr().err.strip()
        assert err.startswith("securefed: error:") and why in err and "\n" not in err, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    assert not list(tmp_path.glob(".*partial*"))


def test_packaged_model_is_located_by_its_record_and_checked(tmp_path):
    path, digest = sources.locate(sources.SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(digest) == 64
    assert sources.lookup("SmolLM2") is sources.SMOLLM2
    with pytest.raises(ModelError, match="known: smollm2"):
        sources.lookup("llama-70b")


def test_a_packaged_file_changed_after_installation_is_refused(tmp_path, monkeypatch):
    """The RECORD check, on a distribution laid out like the real one; the negative control is the same
    distribution before the file is changed."""
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    data = b"GGUF" + b"\x00" * 60
    (site / "pkg" / "m.gguf").write_bytes(data)
    info = site / "fake_model-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-model\nVersion: 1.0\n")
    b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"pkg/m.gguf,sha256={b64},{len(data)}\n")
    model = sources.PackagedModel("fake", "fake-model", "1.0", "pkg/m.gguf", "fake", "none", "test")
    monkeypatch.setattr(md, "distribution", lambda name: md.PathDistribution(info))
    assert sources.locate(model)[1] == hashlib.sha256(data).hexdigest()
    (site / "pkg" / "m.gguf").write_bytes(data[:-1] + b"\x01")
    with pytest.raises(ModelError, match="differs from the one fake-model recorded"):
        sources.locate(model)


def test_a_tied_head_the_loader_left_untied_is_tied_not_saved_as_noise(gguf_path, tmp_path, monkeypatch):
    """In a long-lived process transformers' GGUF load has reported ``lm_head.weight MISSING`` and left a
    newly initialised head (the full suite hit it): simulated by switching its tying off. The conversion
    ties the head itself, so the checkpoint still computes what the GGUF's tied model computes."""
    ckpt, path = gguf_path
    monkeypatch.setattr(modeling_utils.PreTrainedModel, "tie_weights", lambda self, *a, **k: None)
    out = import_gguf(path, tmp_path / "out", say=lambda _: None).out_dir
    monkeypatch.undo()
    ids = torch.tensor([probe_ids(load_model(ckpt).tokenizer)])
    with torch.no_grad():
        assert torch.equal(load_model(ckpt).model(input_ids=ids).logits, load_model(out).model(input_ids=ids).logits)
