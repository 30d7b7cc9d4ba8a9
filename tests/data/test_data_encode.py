"""Records as tokens: the model's own chat template, loss on the assistant turns only, counted
truncation or refusal, packing of text; the tiny preset's tokenizer stands in for a real one."""

from __future__ import annotations

import json

import pytest

from securefed.data.encode import ALPACA_TEMPLATE, IGNORE_INDEX, Encoder
from securefed.data.records import parse_record
from securefed.data.settings import DataSettings
from securefed.errors import InvalidInput
from securefed.training.data import load_records
from securefed.training.families import ModelKind
from securefed.training.model import load_tokenizer
from securefed.training.preset import build_tiny_model

# ChatML-like, as SmolLM2 and Qwen ship it (with the tiny vocabulary's own special tokens).
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def plain_tok(tmp_path_factory):
    return load_tokenizer(build_tiny_model(tmp_path_factory.mktemp("tiny"), "tiny", pretrain=False))


@pytest.fixture()
def chat_tok(plain_tok):
    plain_tok.chat_template = TEMPLATE
    yield plain_tok
    plain_tok.chat_template = None


def _labelled(tok, e):
    return tok.decode([t for t in e.labels if t != IGNORE_INDEX])


def _chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_chat_learns_every_assistant_turn_and_nothing_else(chat_tok):
    rec = parse_record(_chat(("system", "Code only."), ("user", "asthma?"), ("assistant", "J45.909"),
                             ("user", "and COPD?"), ("assistant", "J44.9")), "f:1")
    e = Encoder(chat_tok).encode(rec)
    # The whole conversation, token for token, is what the template renders.
    assert chat_tok.decode(e.ids) == chat_tok.apply_chat_template(
        [{"role": t.role, "content": t.content} for t in rec.turns], tokenize=False)
    # Labelled: the two answers with the end-of-turn the template puts after each; no user/system text.
    assert _labelled(chat_tok, e) == "J45.909</s>\nJ44.9</s>\n"
    assert len(e.labels) == len(e.ids)
    # Generation starts right after the last assistant header.
    assert chat_tok.decode(e.prompt).endswith("and COPD?</s>\n<s>assistant\n")


def test_instruction_and_alpaca_use_the_chat_template_when_the_model_has_one(chat_tok, plain_tok):
    pair = parse_record({"instruction": "Say hi", "response": "hi there"}, "f:1")
    e = Encoder(chat_tok).encode(pair)
    assert "### Instruction" not in chat_tok.decode(e.ids) and "<s>user\nSay hi" in chat_tok.decode(e.ids)
    assert _labelled(chat_tok, e) == "hi there</s>\n"


def test_without_a_template_one_exchange_gets_the_instruction_format(plain_tok):
    alpaca = parse_record({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "f:1")
    e = Encoder(plain_tok).encode(alpaca)
    prompt = ALPACA_TEMPLATE.format(instruction="Translate", input="bonjour")
    assert plain_tok.decode(e.prompt) == prompt
    assert e.labels[:len(e.prompt)] == [IGNORE_INDEX] * len(e.prompt)
    assert _labelled(plain_tok, e) == "hello</s>"
    multi = parse_record(_chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")), "f:9")
    with pytest.raises(InvalidInput, match="^f:9: this model's tokenizer has no chat template"):
        Encoder(plain_tok).encode(multi)


def test_seq2seq_reads_the_prompt_and_learns_the_last_answer(plain_tok):
    rec = parse_record(_chat(("user", "asthma?"), ("assistant", "J45.909")), "f:1")
    e = Encoder(plain_tok, seq2seq=True).encode(rec)
    assert plain_tok.decode(e.ids) == "user: asthma?</s>" and plain_tok.decode(e.labels) == "J45.909</s>"


def _write(tmp_path, recs):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_long_records_are_counted_or_refused(tmp_path, chat_tok):
    recs = [_chat(("user", "short"), ("assistant", "ok")),
            _chat(("user", "hi"), ("assistant", "a fairly long answer that will not fit in the block")),
            _chat(("user", "y" * 80), ("assistant", "lost"))]
    p = _write(tmp_path, recs)
    loaded = load_records(p, chat_tok, 32)
    s = loaded.stats
    assert (s.records, s.examples, s.truncated, s.answer_lost, s.unit) == (3, 3, 2, 1, "record")
    assert s.longest > 32 and "2 truncated to max_seq_len, 1 of them with no answer left" in s.summary()
    assert loaded.dataset.seq_len == 32
    assert (loaded.dataset.labels[2] == IGNORE_INDEX).all()  # nothing of the third answer survived
    with pytest.raises(InvalidInput, match=rf"^{p}:2: the record is \d+ tokens within max_seq_len=32.*long_records"):
        load_records(p, chat_tok, 32, settings=DataSettings(long_records="refuse"))
    with pytest.raises(InvalidInput, match=rf"^{p}:2: the prompt alone is \d+ tokens, no room for the answer"):
        load_records(_write(tmp_path, [recs[0], recs[2]]), chat_tok, 32, settings=DataSettings(long_records="refuse"))


def test_packing_keeps_every_text_token_in_full_blocks(tmp_path, plain_tok):
    texts = [f"record number {i} " * (3 + i % 5) for i in range(12)]
    p = _write(tmp_path, [{"text": t} for t in texts] + [{"instruction": "Say hi", "response": "hi"}])
    one_each = load_records(p, plain_tok, 32)
    assert one_each.stats.truncated > 0 and one_each.stats.examples == 13
    packed = load_records(p, plain_tok, 32, settings=DataSettings(pack_text=True))
    s = packed.stats
    assert s.packed == 12 and s.unit == "token-block" and s.truncated == 0
    stream = [t for x in texts for t in plain_tok(x, add_special_tokens=False)["input_ids"] + [plain_tok.eos_token_id]]
    blocks = packed.dataset.input_ids[1:]  # the instruction record comes first, then the blocks
    mask = packed.dataset.attention_mask[1:]
    assert blocks[mask.bool()].tolist() == stream  # nothing cut, nothing repeated, in order
    assert s.examples == 1 + -(-len(stream) // 32)
    assert ModelKind.CAUSAL  # packing is for causal members; seq2seq keeps one example per record
