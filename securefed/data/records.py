"""JSONL records as members have them, checked line by line; every refusal names the file and line.

One JSON object per line, in one of four shapes:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` with at
  least one non-empty assistant turn (loss is taken on the assistant turns only);
- Alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be empty or absent);
- instruction: ``{"instruction": ..., "response": ...}``;
- text: ``{"text": ...}`` (every token is learned).

Any record but text may add ``"options": [...]`` (the candidate answers of a multiple-choice item,
one of them the final assistant answer, or the one ``"answer": i`` names) and ``"meta": {...}`` (ignored by
training; kept for evaluation, e.g. the ICD-10-CM chapter). An unknown key is refused, so a typo
such as ``"respone"`` is not silently a different record shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from securefed.errors import InvalidInput

ROLES = ("system", "user", "assistant")
_OPTIONAL = {"options", "answer", "meta"}


class RecordKind(str, Enum):
    TEXT = "text"
    INSTRUCTION = "instruction"
    ALPACA = "alpaca"
    CHAT = "chat"


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class Record:
    """One training example (the unit of privacy): a whole conversation, pair or text."""

    where: str  # "path:line", for messages
    kind: RecordKind
    text: str | None = None  # TEXT only
    turns: tuple[Turn, ...] = ()  # every other kind, as a conversation
    instruction: str | None = None  # INSTRUCTION / ALPACA: for a model without a chat template
    input: str = ""  # ALPACA's optional input
    options: tuple[str, ...] = ()
    answer: int | None = None  # index into options
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def reference(self) -> str:
        """The answer an evaluation compares a generation with: the last assistant turn (text: none)."""
        for t in reversed(self.turns):
            if t.role == "assistant":
                return t.content
        return ""


def _string(rec: dict, key: str, where: str, *, empty_ok: bool = False) -> str:
    v = rec[key]
    if not isinstance(v, str) or (not empty_ok and not v.strip()):
        raise InvalidInput(f"{where}: '{key}' must be a {'' if empty_ok else 'non-empty '}string")
    return v


def _turns(raw: Any, where: str) -> tuple[Turn, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    turns = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise InvalidInput(f"{where}: messages[{i}] must be an object with exactly 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise InvalidInput(f"{where}: messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidInput(f"{where}: messages[{i}].content must be a string")
        turns.append(Turn(role, content))
    if not any(t.role == "assistant" and t.content.strip() for t in turns):
        raise InvalidInput(f"{where}: a chat record needs a non-empty assistant turn (the text it learns)")
    if any(t.role == "system" for t in turns[1:]):
        raise InvalidInput(f"{where}: a system message may only come first")
    return tuple(turns)


def _options(rec: dict, reference: str, where: str) -> tuple[tuple[str, ...], int | None]:
    if "options" not in rec:
        if "answer" in rec:
            raise InvalidInput(f"{where}: 'answer' needs 'options'")
        return (), None
    opts = rec["options"]
    if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts):
        raise InvalidInput(f"{where}: 'options' must be a list of at least two non-empty strings")
    if len(set(opts)) != len(opts):
        raise InvalidInput(f"{where}: 'options' has duplicates")
    answer = rec.get("answer")
    if answer is None:
        if reference not in opts:
            raise InvalidInput(f"{where}: the answer {reference!r} is not among 'options'; add it or set 'answer'")
        return tuple(opts), opts.index(reference)
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(opts):
        raise InvalidInput(f"{where}: 'answer' must be an index into 'options' (0..{len(opts) - 1})")
    if opts[answer] != reference:
        raise InvalidInput(f"{where}: options[{answer}] differs from the record's answer {reference!r}")
    return tuple(opts), answer


def parse_record(rec: Any, where: str) -> Record:
    """One decoded JSON line as a :class:`Record` (``InvalidInput`` naming ``where`` otherwise)."""
    if not isinstance(rec, dict):
        raise InvalidInput(f"{where}: expected a JSON object with 'messages', 'text' or 'instruction'/'response'")
    keys = set(rec) - _OPTIONAL
    meta = rec.get("meta", {})
    if not isinstance(meta, dict):
        raise InvalidInput(f"{where}: 'meta' must be a JSON object")
    if keys == {"text"}:
        if set(rec) - {"text", "meta"}:
            raise InvalidInput(f"{where}: a text record cannot have 'options' or 'answer'")
        return Record(where, RecordKind.TEXT, text=_string(rec, "text", where), meta=meta)
    if keys == {"messages"}:
        turns = _turns(rec["messages"], where)
        kind, instruction, extra = RecordKind.CHAT, None, ""
    elif keys == {"instruction", "response"}:
        instruction, response = _string(rec, "instruction", where, empty_ok=True), _string(rec, "response", where)
        kind, extra = RecordKind.INSTRUCTION, ""
        turns = (Turn("user", instruction), Turn("assistant", response))
    elif keys in ({"instruction", "input", "output"}, {"instruction", "output"}):
        instruction, output = _string(rec, "instruction", where), _string(rec, "output", where)
        extra = _string(rec, "input", where, empty_ok=True) if "input" in rec else ""
        kind = RecordKind.ALPACA
        turns = (Turn("user", instruction + (f"\n\n{extra}" if extra.strip() else "")), Turn("assistant", output))
    else:
        raise InvalidInput(f"{where}: expected keys 'messages', 'text', 'instruction'+'response' or "
                           f"'instruction'+'input'+'output', got {sorted(rec)}")
    record = Record(where, kind, turns=turns, instruction=instruction, input=extra, meta=meta)
    options, answer = _options(rec, record.reference, where)
    if options:
        record = Record(where, kind, turns=turns, instruction=instruction, input=extra, options=options,
                        answer=answer, meta=meta)
    return record


def read_jsonl(path: str | Path) -> list[Record]:
    """Every record of a JSONL file; a blank line, bad JSON or bad record is refused with ``path:line``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: data file not found") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory; point data.path at a JSONL file") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read data file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path}:{line}: not UTF-8; save the data file as UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not make an empty record
    out = []
    for lineno, line in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            raise InvalidInput(f"{where}: empty line; remove it (one JSON object per line)")
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: invalid JSON ({exc.msg}); one JSON object per line") from None
        except RecursionError:
            raise InvalidInput(f"{where}: invalid JSON (nested too deeply)") from None
        out.append(parse_record(rec, where))
    if not out:
        raise InvalidInput(f"{path}: no records; add JSON lines")
    return out
