"""`securefed eval` on a tiny Llama with a chat template: loss on the answer tokens, deterministic greedy
generations, multiple-choice log-likelihood, and the adapter files securefed writes (bundle, PEFT)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from securefed.cli import main
from securefed.data.records import read_jsonl
from securefed.errors import ModelError
from securefed.evaluation.loading import load_for_eval
from securefed.evaluation.task import choice_accuracy, evaluate_records
from securefed.protocol.bundle import write_adapter_file
from securefed.training.adapter import adapter_to_vector
from securefed.training.config import LoraSettings
from securefed.training.fingerprint import compute_fingerprint
from securefed.training.model import load_model, load_tokenizer

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
LORA = LoraSettings(rank=4, alpha=8, target_modules=("q_proj", "v_proj"))
CODES = ["J45.909", "I10", "E11.9", "K21.9", "M54.5", "N39.0"]


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("chat") / "m"
    shutil.copytree(tiny_model, d)
    tok = load_tokenizer(d)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "held.jsonl"
    recs = [{"messages": [{"role": "user", "content": f"code for condition {i}"},
                          {"role": "assistant", "content": c}],
             "options": [c, CODES[(i + 1) % len(CODES)]]} for i, c in enumerate(CODES)]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


@pytest.fixture(scope="module")
def bundle(chat_model, tmp_path_factory):
    """A global adapter file as the server writes it: a non-trivial vector, its layout, the federation's settings."""
    lm = load_model(chat_model, LORA)
    vec, layout = adapter_to_vector(lm.model)
    vec = vec + np.linspace(-0.05, 0.05, vec.size, dtype=np.float32)  # B != 0: the adapter changes the model
    settings = json.dumps({"lora": LORA.model_dump(mode="json"), "strategy": {},
                           "base_model": {"fingerprint": compute_fingerprint(chat_model)}})
    path = tmp_path_factory.mktemp("adapter") / "final_adapter.safetensors"
    write_adapter_file(path, vec.astype(np.float32), layout.to_json(), settings_json=settings)
    return path


def test_loss_is_on_the_answer_tokens_and_generation_is_deterministic(chat_model, data, bundle):
    em = load_for_eval(chat_model, bundle)
    model, tok = em.loaded.model, em.loaded.tokenizer
    recs = read_jsonl(data)
    r1 = evaluate_records(model, tok, recs, max_seq_len=64, max_new_tokens=6, batch_size=4)
    r2 = evaluate_records(model, tok, recs, max_seq_len=64, max_new_tokens=6, batch_size=4)
    assert r1.metric == "exact_match" and r1.samples == r2.samples and r1.loss == r2.loss
    assert set(r1.metrics) >= {"exact_match", "category_match", "token_f1", "rouge_l", "choice_accuracy"}
    # The loss by hand: full logits, cross-entropy of the answer (and end-of-turn) tokens only.
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for r in recs:
            prompt = tok.apply_chat_template([{"role": t.role, "content": t.content} for t in r.turns[:-1]],
                                             tokenize=False, add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tok(r.reference + "</s>\n", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + a_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            lab = torch.arange(len(p_ids) - 1, ids.shape[1] - 1)
            total += -logp[lab, tgt[lab]].sum().item()
            count += len(lab)
    assert r1.loss == pytest.approx(total / count, rel=1e-4) and r1.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)


def test_choice_accuracy_picks_the_most_likely_option(chat_model, data):
    lm = load_model(chat_model)
    tok, model = lm.tokenizer, lm.model
    recs = read_jsonl(data)
    got = choice_accuracy(model, tok, recs, kind=lm.kind, max_seq_len=64)
    right = 0
    with torch.no_grad():
        for r in recs:
            prompt = tok.apply_chat_template([{"role": "user", "content": r.turns[0].content}], tokenize=False,
                                             add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            scores = []
            for o in r.options:
                a_ids = tok(o + "</s>\n", add_special_tokens=False)["input_ids"]
                ids = torch.tensor([p_ids + a_ids])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                lab = torch.arange(len(p_ids) - 1, ids.shape[1] - 1)
                scores.append(logp[lab, ids[0, 1:][lab]].sum().item())
            right += int(int(np.argmax(scores)) == r.answer)
    assert got == pytest.approx(right / len(recs))


def test_cli_bundle_and_peft_directory_agree_and_a_foreign_base_is_refused(chat_model, data, bundle, tmp_path, capsys):
    args = ["eval", "--model", str(chat_model), "--data", str(data), "--max-new-tokens", "4", "--json"]
    assert main([*args, "--adapter", str(bundle)]) == 0
    via_bundle = json.loads(capsys.readouterr().out)
    assert via_bundle["adapter_kind"] == "securefed-bundle" and via_bundle["records"] == len(CODES)
    # The same adapter as a PEFT directory (what the demo exports) gives the same numbers.
    em = load_for_eval(chat_model, bundle)
    em.loaded.model.save_pretrained(str(tmp_path / "peft"))
    assert main([*args, "--adapter", str(tmp_path / "peft")]) == 0
    via_peft = json.loads(capsys.readouterr().out)
    assert via_peft["loss"] == pytest.approx(via_bundle["loss"], rel=1e-5)
    assert via_peft["samples"] == via_bundle["samples"]
    assert main(args) == 0  # the base model: a different loss (the adapter is not a no-op)
    assert json.loads(capsys.readouterr().out)["loss"] != pytest.approx(via_bundle["loss"], rel=1e-5)
    # Another base model (one weight changed): refused in one line, no traceback.
    other = tmp_path / "other"
    shutil.copytree(chat_model, other)
    lm = load_model(other)
    with torch.no_grad():
        next(lm.model.parameters()).view(-1)[0] += 1.0
    lm.model.save_pretrained(other)
    assert main(["eval", "--model", str(other), "--data", str(data), "--adapter", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "was trained on base model" in err and "Traceback" not in err
    with pytest.raises(ModelError, match="without adapter_config.json"):
        load_for_eval(chat_model, tmp_path)
