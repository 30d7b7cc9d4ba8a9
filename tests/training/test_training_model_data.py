"""Model loading, preset, adapter vectors and data loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.config import parse_model
from securefed.errors import ConfigError, InvalidInput, ModelError
from securefed.training.adapter import AdapterLayout, adapter_to_vector, load_adapter_vector
from securefed.training.config import LocalTrainingSettings, LoraSettings
from securefed.training.data import (
    IGNORE_INDEX,
    blocks_from_texts,
    demo_client_dataset,
    demo_corpus,
    demo_heldout_dataset,
    evaluate,
    load_jsonl,
    split_demo_corpus,
)
from securefed.training.model import load_model
from securefed.training.preset import build_tiny_model


@pytest.fixture(scope="session")
def tiny_dir_md(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_md"), "tiny", pretrain=False)


@pytest.fixture(scope="session")
def loaded(tiny_dir_md):
    return load_model(tiny_dir_md, LoraSettings(rank=4, alpha=8))


# ----------------------------------------------------------------------------- preset and loading

def test_preset_is_tiny_llama_loaded_through_from_pretrained(tiny_dir_md, loaded):
    cfg = json.loads((tiny_dir_md / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2
    assert cfg["vocab_size"] <= 512
    assert len(loaded.tokenizer) <= cfg["vocab_size"]
    text = "def f(x):\n    return x ** 2  # ünïcode ✓"
    assert loaded.tokenizer.decode(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    base_params = sum(p.numel() for p in loaded.model.parameters())
    assert base_params < 500_000


def test_preset_is_deterministic(tmp_path, tiny_dir_md):
    other = build_tiny_model(tmp_path / "again", "tiny", pretrain=False)
    a = (tiny_dir_md / "model.safetensors").read_bytes()
    b = (other / "model.safetensors").read_bytes()
    assert a == b
    assert (tiny_dir_md / "tokenizer.json").read_text() == (other / "tokenizer.json").read_text()


def test_same_settings_same_initial_adapter(tiny_dir_md, loaded):
    again = load_model(tiny_dir_md, LoraSettings(rank=4, alpha=8))
    v1, l1 = adapter_to_vector(loaded.model)
    v2, l2 = adapter_to_vector(again.model)
    assert l1 == l2 and l1.hexdigest() == l2.hexdigest()
    assert np.array_equal(v1, v2)
    other = load_model(tiny_dir_md, LoraSettings(rank=4, alpha=8, init_seed=1))
    assert not np.array_equal(v1, adapter_to_vector(other.model)[0])


def test_missing_and_corrupt_model_dir(tmp_path, tiny_dir_md):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir_md, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="weights"):
        load_model(broken)
    notok = tmp_path / "notok"
    shutil.copytree(tiny_dir_md, notok)
    (notok / "tokenizer.json").unlink()
    (notok / "tokenizer_config.json").unlink()
    with pytest.raises(ModelError, match="tokenizer"):
        load_model(notok)


def test_tokenizer_vocab_mismatch(tmp_path, tiny_dir_md):
    small = tmp_path / "small_vocab"
    shutil.copytree(tiny_dir_md, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["vocab_size"] = 100
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="tokenizer has"):
        load_model(small)


def test_unknown_lora_target(tiny_dir_md):
    with pytest.raises(ModelError, match="target_modules"):
        load_model(tiny_dir_md, LoraSettings(target_modules=("c_attn",)))


# ----------------------------------------------------------------------------- adapter vectors

def test_adapter_vector_roundtrip_bit_exact(loaded):
    vec, layout = adapter_to_vector(loaded.model)
    assert vec.dtype == np.float32 and vec.ndim == 1 and vec.size == layout.total_size
    # q_proj: A 4x64 + B 64x4; v_proj: A 4x64 + B 32x4 (2 kv heads of 16); 2 layers
    assert layout.total_size == 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))
    weird = np.array([np.float32(x) for x in np.linspace(-3, 3, vec.size)], dtype=np.float32)
    weird[::7] = np.float32(1e-45)  # subnormals survive bit-exactly
    weird[1] = np.float32(-0.0)
    load_adapter_vector(loaded.model, weird, layout)
    back, layout2 = adapter_to_vector(loaded.model)
    assert layout2 == layout
    assert back.tobytes() == weird.tobytes()
    load_adapter_vector(loaded.model, vec, layout)


def test_adapter_vector_rejects_bad_input(loaded):
    vec, layout = adapter_to_vector(loaded.model)
    with pytest.raises(InvalidInput, match="length"):
        load_adapter_vector(loaded.model, vec[:-1], layout)
    with pytest.raises(InvalidInput, match="float32"):
        load_adapter_vector(loaded.model, vec.astype(np.float64), layout)
    bad = vec.copy()
    bad[3] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        load_adapter_vector(loaded.model, bad, layout)
    other = AdapterLayout(layout.names[:-1], layout.shapes[:-1], layout.dtypes[:-1])
    with pytest.raises(ModelError, match="layout mismatch"):
        load_adapter_vector(loaded.model, vec[: other.total_size], other)


def test_layout_json_and_hash_are_stable(loaded):
    _, layout = adapter_to_vector(loaded.model)
    text = layout.to_json()
    again = AdapterLayout.from_json(text)
    assert again == layout and hash(again) == hash(layout)
    assert again.hexdigest() == layout.hexdigest() and len(layout.digest()) == 32
    # Known structure: canonical JSON with sorted keys and no whitespace.
    assert text.startswith('{"tensors":[{"dtype":"float32","name":"base_model.model.model.layers.0.self_attn.q_proj')
    with pytest.raises(InvalidInput):
        AdapterLayout.from_json('{"version": 2, "tensors": []}')
    with pytest.raises(InvalidInput):
        AdapterLayout.from_json("not json")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5)), min_size=1, max_size=6))
def test_layout_json_roundtrip_property(shapes):
    layout = AdapterLayout(
        names=tuple(f"t{i}" for i in range(len(shapes))),
        shapes=tuple(shapes),
        dtypes=tuple("float32" for _ in shapes),
    )
    assert AdapterLayout.from_json(layout.to_json()) == layout
    assert layout.total_size == sum(a * b for a, b in shapes)


# ----------------------------------------------------------------------------- data

def test_jsonl_text_and_instruction(tmp_path, loaded):
    tok = loaded.tokenizer
    p = tmp_path / "d.jsonl"
    p.write_text(
        json.dumps({"text": "hello world"}) + "\n"
        + json.dumps({"instruction": "Say hi", "response": "hi there"}) + "\n"
    )
    ds = load_jsonl(p, tok, 48)
    assert len(ds) == 2 and ds.seq_len == 48
    # text: all real tokens learned; padding ignored
    n0 = int(ds.attention_mask[0].sum())
    assert (ds.labels[0, :n0] == ds.input_ids[0, :n0]).all()
    assert (ds.labels[0, n0:] == IGNORE_INDEX).all()
    # instruction: the prompt gets -100, the response (and EOS) is learned
    prompt_len = len(tok("### Instruction:\nSay hi\n\n### Response:\n", add_special_tokens=False)["input_ids"])
    assert (ds.labels[1, :prompt_len] == IGNORE_INDEX).all()
    resp = ds.labels[1, prompt_len:][ds.labels[1, prompt_len:] != IGNORE_INDEX].tolist()
    assert tok.decode(resp[:-1]) == "hi there" and resp[-1] == tok.eos_token_id


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"text": "a"}\n\n{"text": "b"}\n', ":2: empty line"),
        ('{"text": "a"}\n{"text": \n', ":2: invalid JSON"),
        ('[1,2]\n', ":1: expected a JSON object"),
        ('{"text": ""}\n', ":1: 'text' must be"),
        ('{"prompt": "x", "completion": "y"}\n', ":1: expected keys"),
        ("", "no records"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, loaded, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(InvalidInput, match=match):
        load_jsonl(p, loaded.tokenizer, 32)


def test_demo_split_is_non_iid_deterministic_and_disjoint():
    s1 = split_demo_corpus(3)
    s2 = split_demo_corpus(3)
    assert s1 == s2
    all_topics = set(demo_corpus())
    seen = [t for c in s1.clients for t in c] + list(s1.heldout)
    assert len(seen) == len(set(seen)) == len(all_topics)  # whole topics, each exactly once
    assert all(len(c) > 0 for c in s1.clients) and len(s1.heldout) >= 1
    # Adding a client changes the assignment but never splits a topic.
    s4 = split_demo_corpus(4)
    assert s4.heldout == s1.heldout
    with pytest.raises(InvalidInput):
        split_demo_corpus(0)


def test_demo_blocks_and_evaluate(loaded):
    tok = loaded.tokenizer
    ds = demo_client_dataset(tok, 0, 3, 32)
    held = demo_heldout_dataset(tok, 3, 32)
    assert ds.seq_len == 32 and len(ds) > 50 and len(held) > 10
    assert (ds.labels == ds.input_ids).all() and (ds.attention_mask == 1).all()
    loss, ppl = evaluate(loaded.model, held, max_examples=16)
    assert 0 < loss < 10 and ppl == pytest.approx(np.exp(loss))
    # Untrained model on a 512-token vocab: perplexity near the vocab size.
    assert 100 < ppl < 2000
    with pytest.raises(InvalidInput):
        blocks_from_texts(["a"], tok, 64)


def test_settings_validation():
    s = parse_model(LocalTrainingSettings, {"learning_rate": 0.1, "clipping": "ghost", "steps": 5})
    assert s.clipping.value == "ghost" and s.secure_mode is True and s.noise_multiplier is None
    with pytest.raises(ConfigError, match="clipping"):
        parse_model(LocalTrainingSettings, {"clipping": "fast"})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_model(LoraSettings, {"rnak": 4})
    with pytest.raises(ConfigError, match="clip_norm"):
        parse_model(LocalTrainingSettings, {"clip_norm": 0})


def test_layout_without_weights_matches_loaded_model(tiny_dir_md, loaded):
    from transformers import LlamaConfig

    from securefed.training.model import layout_for_config

    _, layout = adapter_to_vector(loaded.model)
    assert layout_for_config(tiny_dir_md, LoraSettings(rank=4, alpha=8)) == layout
    # 7B-Llama-shaped config, q/v targets, r=8: 32 layers * 2 modules * 8 * (4096 + 4096) parameters.
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000)
    big = layout_for_config(cfg, LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "v_proj")))
    assert big.total_size == 4_194_304 and big.nbytes == 16_777_216


@pytest.mark.slow
def test_default_preset_is_pretrained_on_public_text(tmp_path, loaded):
    """The default tiny preset is briefly pretrained (stdlib docstrings), so the demo has a real LM to adapt."""
    d = build_tiny_model(tmp_path / "pre")
    marker = json.loads((d / "securefed_preset.json").read_text())
    assert marker["pretrained"] is True and marker["size"] == "tiny"
    pre = load_model(d)
    held = demo_heldout_dataset(pre.tokenizer, 3, 64)
    _, ppl_pre = evaluate(pre.model, held, max_examples=64)
    _, ppl_random = evaluate(loaded.model, held, max_examples=64)
    assert ppl_pre < 150 < 300 < ppl_random


@pytest.mark.slow  # builds and trains the preset through the CLI
def test_model_preset_cli_builds_a_loadable_checkpoint_and_refuses_a_used_dir(tmp_path, capsys):
    from securefed.cli import main
    from securefed.training.model import load_model

    out = tmp_path / "base"
    assert main(["model", "preset", "--out", str(out)]) == 0
    assert (out / "config.json").exists()
    loaded = load_model(out)
    assert loaded.model.config.model_type == "llama"
    assert main(["model", "preset", "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- seq2seq data

def test_seq2seq_examples_are_input_then_continuation_or_instruction_then_response(tmp_path, loaded):
    from securefed.training.families import ModelKind

    tok = loaded.tokenizer
    topics = demo_corpus()
    text = [topics[k] for k in sorted(topics)[:2]]
    causal = blocks_from_texts(text, tok, 32)
    s2s = blocks_from_texts(text, tok, 32, ModelKind.SEQ2SEQ)
    assert len(s2s) == len(causal) and s2s.seq_len == 16
    # Each block's first half is the encoder input, the second half the target: the same tokens.
    assert (s2s.input_ids == causal.input_ids[:, :16]).all() and (s2s.labels == causal.input_ids[:, 16:]).all()
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"instruction": "Say hi", "response": "hi there"}) + "\n"
                 + json.dumps({"text": "one two three four five six"}) + "\n")
    ds = load_jsonl(p, tok, 24, kind=ModelKind.SEQ2SEQ)
    enc = tok("Say hi", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = int(ds.attention_mask[0].sum())
    assert ds.input_ids[0, :n].tolist() == enc  # the bare instruction, no template
    resp = ds.labels[0][ds.labels[0] != IGNORE_INDEX].tolist()
    assert tok.decode(resp[:-1]) == "hi there" and resp[-1] == tok.eos_token_id
    ids = tok("one two three four five six", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    half = len(ids) // 2
    assert ds.input_ids[1, :half].tolist() == ids[:half]
    assert ds.labels[1][ds.labels[1] != IGNORE_INDEX].tolist() == ids[half:]
