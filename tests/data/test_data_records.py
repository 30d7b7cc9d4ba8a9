"""JSONL records as members have them: chat, Alpaca, instruction/response, text; refusals name file and line."""

from __future__ import annotations

import json

import pytest

from securefed.data.records import RecordKind, parse_record, read_jsonl
from securefed.errors import InvalidInput

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Code for asthma?"},
                     {"role": "assistant", "content": "J45.909"}]}


def test_every_shape_parses_to_a_conversation_or_text():
    chat = parse_record(CHAT, "f:1")
    assert chat.kind is RecordKind.CHAT and chat.reference == "J45.909" and len(chat.turns) == 3
    alpaca = parse_record({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "f:2")
    assert alpaca.kind is RecordKind.ALPACA and alpaca.turns[0].content == "Translate\n\nbonjour"
    assert alpaca.input == "bonjour" and alpaca.reference == "hello"
    no_input = parse_record({"instruction": "Say hi", "output": "hi"}, "f:3")
    assert no_input.kind is RecordKind.ALPACA and no_input.turns[0].content == "Say hi"
    pair = parse_record({"instruction": "Say hi", "response": "hi"}, "f:4")
    assert pair.kind is RecordKind.INSTRUCTION and pair.reference == "hi"
    text = parse_record({"text": "plain", "meta": {"source": "x"}}, "f:5")
    assert text.kind is RecordKind.TEXT and text.reference == "" and text.meta == {"source": "x"}


def test_options_name_the_answer():
    rec = parse_record({**CHAT, "options": ["J44.9", "J45.909", "I10"]}, "f:1")
    assert rec.options == ("J44.9", "J45.909", "I10") and rec.answer == 1
    rec = parse_record({**CHAT, "options": ["J44.9", "J45.909"], "answer": 1}, "f:1")
    assert rec.answer == 1


@pytest.mark.parametrize("rec, match", [
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "needs a non-empty assistant turn"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, r"messages\[0\]\.role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content must be a string"),
    ({"messages": [{"role": "user", "text": "hi"}]}, "exactly 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "system message may only come first"),
    ({"instruction": "x", "respone": "y"}, "expected keys"),
    ({"instruction": "x", "output": ""}, "'output' must be a non-empty string"),
    ({"text": "x", "options": ["a", "b"]}, "cannot have 'options'"),
    ({**CHAT, "options": ["a", "b"]}, "not among 'options'"),
    ({**CHAT, "options": ["J45.909", "J45.909"]}, "duplicates"),
    ({**CHAT, "options": ["J45.909", "b"], "answer": 1}, r"options\[1\] differs"),
    ({**CHAT, "answer": 0}, "'answer' needs 'options'"),
    ({**CHAT, "meta": []}, "'meta' must be a JSON object"),
])
def test_bad_records_are_refused_naming_the_line(rec, match):
    with pytest.raises(InvalidInput, match=f"^data.jsonl:7: .*{match}"):
        parse_record(rec, "data.jsonl:7")


def test_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(CHAT) + "\n" + '{"messages": [{"role": "user"}]}\n')
    with pytest.raises(InvalidInput, match=r"d\.jsonl:2: messages\[0\]"):
        read_jsonl(p)
    p.write_bytes(json.dumps(CHAT).encode() + b"\n" + b'{"text": "\xff"}\n')
    with pytest.raises(InvalidInput, match=r"d\.jsonl:2: not UTF-8"):
        read_jsonl(p)
    with pytest.raises(InvalidInput, match="is a directory"):
        read_jsonl(tmp_path)
    p.write_text(json.dumps(CHAT) + "\n")
    assert [r.where for r in read_jsonl(p)] == [f"{p}:1"]
