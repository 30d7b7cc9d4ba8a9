"""What a member's own checkpoint gets refused for, each in one line: weights that do not cover the
model, custom code without trust_remote_code, LoRA targets the model does not have."""

from __future__ import annotations

import json
import shutil

import pytest
from family_zoo import build_family
from peft.tuners.lora import LoraLayer

from securefed.errors import ModelError
from securefed.training.config import LoraSettings, ModelSettings
from securefed.training.model import load_model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_family("llama", tmp_path_factory.mktemp("ref") / "llama")


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_a_bare_automodel_save_is_refused_not_given_a_random_head(tmp_path):
    d = build_family("llama", tmp_path / "bare", bare=True)
    with pytest.raises(ModelError, match="do not cover the model") as e:
        load_model(d)
    assert "lm_head.weight" in _one_line(e)
    # A family whose head is tied to the embeddings (GPT-2) is complete without a separate head tensor.
    load_model(build_family("gpt2", tmp_path / "gpt2-bare", bare=True))


def test_a_truncated_or_missing_shard_is_refused(llama, tmp_path):
    sharded = build_family("llama", tmp_path / "sharded", max_shard_size="20KB")
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ModelError) as e:
        load_model(sharded)
    assert "truncated" in _one_line(e) or "cannot load" in str(e.value)
    shard.unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(sharded)


def test_custom_code_needs_trust_remote_code(llama, tmp_path):
    d = tmp_path / "custom"
    shutil.copytree(llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="acme-llm", auto_map={"AutoConfig": "configuration_acme.AcmeConfig",
                                                "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_acme.py").write_text(
        "from transformers import LlamaConfig\n\nclass AcmeConfig(LlamaConfig):\n    model_type = 'acme-llm'\n")
    (d / "modeling_acme.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_acme import AcmeConfig\n\n"
        "class AcmeForCausalLM(LlamaForCausalLM):\n    config_class = AcmeConfig\n")
    with pytest.raises(ModelError, match="trust_remote_code = true") as e:
        load_model(d)
    _one_line(e)
    # Control: the same directory loads once the member opts in (its code runs).
    lm = load_model(d, LoraSettings(rank=2), ModelSettings(device="cpu", dtype="fp32", trust_remote_code=True))
    assert type(lm.model.get_base_model()).__name__ == "AcmeForCausalLM"
    # Trusted code is only ever the directory's own: code in another repository (which transformers would
    # fetch from a hub) or a module missing here is refused, trust_remote_code or not.
    trusted = ModelSettings(device="cpu", dtype="fp32", trust_remote_code=True)
    for ref in ("acme/remote-llm--modeling_acme.AcmeForCausalLM", "modeling_absent.AcmeForCausalLM"):
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"]["AutoModelForCausalLM"] = ref
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelError, match="securefed never fetches code") as e:
            load_model(d, LoraSettings(rank=2), trusted)
        assert ref in _one_line(e)
    # A known family whose config also names custom code loads with transformers' own class.
    known = tmp_path / "known"
    shutil.copytree(llama, known)
    cfg = json.loads((known / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (known / "config.json").write_text(json.dumps(cfg))
    assert type(load_model(known).model).__name__ == "LlamaForCausalLM"


def test_unknown_targets_list_the_models_real_linear_modules(tmp_path):
    d = build_family("gpt_neox", tmp_path / "neox")
    with pytest.raises(ModelError) as e:
        load_model(d, LoraSettings(target_modules=("q_proj", "v_proj")))
    msg = _one_line(e)
    for real in ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"):
        assert real in msg
    assert "lm_head" not in msg.split("its linear modules are")[1]  # the head is not a LoRA target


def _wrapped(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))


def test_all_linear_and_dotted_suffixes(llama, tmp_path):
    every = _wrapped(load_model(llama, LoraSettings(rank=2, target_modules="all-linear")).model)
    leaves = {n.rsplit(".", 1)[-1] for n in every}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any(n.endswith("lm_head") for n in every)
    dotted = _wrapped(load_model(llama, LoraSettings(rank=2, target_modules=("self_attn.o_proj", "mlp.up_proj"))).model)
    assert {n.rsplit(".", 1)[-1] for n in dotted} == {"o_proj", "up_proj"} and len(dotted) == 4
    one = _wrapped(load_model(llama, LoraSettings(rank=2, target_modules=("layers.1.self_attn.q_proj",))).model)
    assert len(one) == 1 and "layers.1." in one[0]
    with pytest.raises(ModelError, match="match no linear module"):
        load_model(llama, LoraSettings(target_modules=("mlp.q_proj",)))
