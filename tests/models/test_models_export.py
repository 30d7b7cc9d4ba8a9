"""``securefed export``: each artefact read back with the library that serves it (peft, transformers,
transformers' GGUF loader) equals base + the federation's adapter; wrong inputs are refused in one line."""

from __future__ import annotations

import os
import stat

import gguf
import numpy as np
import pytest
import torch
from model_helpers import build_tiny_llama, write_bundle
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from securefed.cli import main
from securefed.errors import ConfigError, ModelError
from securefed.export import checks, gguf_file
from securefed.export.federated import load_federated
from securefed.export.gguf_file import write_gguf
from securefed.export.merged import merge
from securefed.export.pipeline import MARKER, export
from securefed.models.gguf_import import probe_ids


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("export") / "base")


@pytest.fixture(scope="module")
def exported(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    adapter = write_bundle(base, root / "final_adapter.safetensors")
    old = os.umask(0o077)  # a strict umask must not make the served files private
    try:
        record = export(base, adapter, root / "out", merge_model=True, gguf=True, gguf_type="f32", say=lambda _: None)
    finally:
        os.umask(old)
    return base, adapter, root / "out", record


def _reference(base, adapter):
    fed = load_federated(base, adapter)
    return fed, checks.logits(fed.model, probe_ids(fed.tokenizer))


def _plain(path, **kw):
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32, **kw).eval()


def test_peft_directory_loads_with_peft_and_is_the_federated_model(exported):
    base, adapter, out, record = exported
    fed, want = _reference(base, adapter)
    ids = probe_ids(fed.tokenizer)
    served = PeftModel.from_pretrained(_plain(base), str(out / "adapter")).eval()
    assert torch.equal(checks.logits(served, ids), want)
    # Negative control: the base alone is another model, so the comparison can fail.
    assert not torch.allclose(checks.logits(_plain(base), ids), want, atol=1e-3)
    assert record["artefacts"]["adapter"] == "adapter" and (out / MARKER).is_file()


def test_merged_checkpoint_equals_base_plus_adapter_without_peft(exported):
    base, adapter, out, _ = exported
    fed, want = _reference(base, adapter)
    merged = _plain(out / "merged")
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(checks.logits(merged, probe_ids(fed.tokenizer)), want, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(str(out / "merged")).chat_template == fed.tokenizer.chat_template


def test_gguf_reads_back_with_transformers_and_generates_the_same(exported):
    base, adapter, out, record = exported
    fed, _ = _reference(base, adapter)
    merged = merge(fed)
    served = _plain(out, gguf_file="model-f32.gguf")
    served_tok = AutoTokenizer.from_pretrained(str(out), gguf_file="model-f32.gguf")
    prompts = checks.prompt_ids(fed.tokenizer)
    assert checks.prompt_ids(served_tok) == prompts  # the chat template travels in the file
    pad = fed.tokenizer.pad_token_id
    for ids in prompts:
        assert checks.greedy(served, ids, pad) == checks.greedy(merged, ids, pad)
    ids = probe_ids(fed.tokenizer)
    assert torch.equal(checks.logits(served, ids), checks.logits(merged, ids))
    assert record["gguf_check"]["identical"] == record["gguf_check"]["prompts"] == len(checks.PROMPTS)
    names = {t.name: t for t in gguf.GGUFReader(str(out / "model-f32.gguf")).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # tied head, as llama.cpp expects


def test_query_key_permutation_is_what_makes_the_gguf_right(base, tmp_path, monkeypatch):
    """Negative control for the permutation: written without it, the file loads but computes another model."""
    fed = load_federated(base, write_bundle(base, tmp_path / "a.safetensors"))
    merged = merge(fed)
    ids = probe_ids(fed.tokenizer)
    monkeypatch.setattr(gguf_file, "permute_for_llama_cpp", lambda w, n_head: w)
    write_gguf(merged, fed.tokenizer, tmp_path / "unpermuted.gguf", ftype="f32")
    wrong = _plain(tmp_path, gguf_file="unpermuted.gguf")
    assert not torch.allclose(checks.logits(wrong, ids), checks.logits(merged, ids), atol=1e-3)


def test_f16_gguf_stores_half_precision_matrices_and_float32_norms(base, tmp_path):
    fed = load_federated(base, write_bundle(base, tmp_path / "a.safetensors"))
    merged = merge(fed)
    write_gguf(merged, fed.tokenizer, tmp_path / "m.gguf", ftype="f16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    got = checks.logits(_plain(tmp_path, gguf_file="m.gguf"), probe_ids(fed.tokenizer))
    want = checks.logits(merged, probe_ids(fed.tokenizer))
    assert torch.allclose(got, want, atol=5e-2) and not torch.equal(got, want)


def test_exported_files_are_readable_by_others_despite_the_umask(exported):
    _, _, out, _ = exported
    for p in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_an_adapter_trained_on_another_base_is_refused(base, tmp_path):
    other = build_tiny_llama(tmp_path / "other", seed=8)
    adapter = write_bundle(base, tmp_path / "a.safetensors")
    with pytest.raises(ModelError, match="was trained on base model"):
        export(other, adapter, tmp_path / "out", say=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_gguf_export_refuses_other_architectures_in_one_line():
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ModelError, match="supports the Llama architecture") as e:
        gguf_file.check_exportable(model)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_foreign_output_directory_and_a_non_bundle(base, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    adapter = write_bundle(base, tmp_path / "a.safetensors")
    assert main(["export", "--model", str(base), "--adapter", str(adapter), "--out", str(foreign)]) == ConfigError.exit_code
    assert "not an earlier securefed export" in capsys.readouterr().err and (foreign / "keep.txt").read_text() == "mine"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.zeros(16, np.uint8).tobytes())
    assert main(["export", "--model", str(base), "--adapter", str(junk), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("securefed: error:") and "unreadable adapter bundle" in err and "\n" not in err
