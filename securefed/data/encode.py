"""Records as token ids and labels, in the model's own format, with loss on the answer only.

A conversation (a chat record, or an instruction/Alpaca pair) is rendered with the tokenizer's chat
template when it has one (ChatML for SmolLM2/Qwen, Llama-3's headers, ...): every assistant turn is
learned, including the end-of-turn token the template puts after it, and everything else (system
prompt, user turns, the template's markup) gets label -100. The template is applied to growing
prefixes of the conversation, so each assistant turn's span is exactly what the template adds for
it. A tokenizer without a template (the tiny preset, base models) gets the ``### Instruction:``
format for a single exchange; a multi-turn conversation needs a template and is refused.

Seq2seq models read the prompt (the rendered conversation before the last assistant turn) on the
encoder side and learn that turn; plain text is its first half -> its continuation.
"""

from __future__ import annotations

from dataclasses import dataclass

from securefed.data.records import Record, RecordKind
from securefed.errors import InvalidInput

IGNORE_INDEX = -100
DEFAULT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class Encoded:
    """One record, untruncated. Causal: ``ids``/``labels`` are one sequence. Seq2seq: ``ids`` is the
    encoder input, ``labels`` the decoder targets. ``prompt`` is what generation starts from (the
    conversation up to the last answer); empty for text."""

    ids: list[int]
    labels: list[int]
    prompt: list[int]


@dataclass(frozen=True)
class Fitted:
    ids: list[int]
    labels: list[int]
    truncated: bool
    answer_lost: bool  # truncation left no labelled token


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(turns) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]


class Encoder:
    """Turns records into token ids for one tokenizer and model kind (causal or seq2seq)."""

    def __init__(self, tokenizer, *, seq2seq: bool = False, template: str = DEFAULT_TEMPLATE) -> None:
        self.tok = tokenizer
        self.seq2seq = seq2seq
        self.template = template
        self.chat = has_chat_template(tokenizer)
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []

    def _render(self, rec: Record, turns, generation_prompt: bool) -> str:
        try:
            return self.tok.apply_chat_template(_messages(turns), tokenize=False,
                                                add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja2's TemplateError and what templates raise themselves
            raise InvalidInput(f"{rec.where}: the model's chat template refused this conversation "
                               f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None

    def _chat_spans(self, rec: Record) -> tuple[str, list[tuple[int, int]]]:
        """The whole rendered conversation and the character span of every assistant turn in it."""
        whole = self._render(rec, rec.turns, False)
        spans = []
        for i, turn in enumerate(rec.turns):
            if turn.role != "assistant":
                continue
            before = self._render(rec, rec.turns[:i], True)
            upto = self._render(rec, rec.turns[: i + 1], False)
            if not (upto.startswith(before) and whole.startswith(upto)):
                raise InvalidInput(f"{rec.where}: the model's chat template does not render this conversation "
                                   "turn by turn; use one exchange per record")
            if len(upto) > len(before):
                spans.append((len(before), len(upto)))
        return whole, spans

    def _chat(self, rec: Record) -> Encoded:
        whole, spans = self._chat_spans(rec)
        ids: list[int] = []
        labels: list[int] = []
        prompt: list[int] = []
        at = 0
        for start, end in spans:
            head = self._ids(whole[at:start])
            ids += head
            labels += [IGNORE_INDEX] * len(head)
            prompt = list(ids)  # generation starts after the last assistant turn's header
            answer = self._ids(whole[start:end])
            ids += answer
            labels += answer
            at = end
        tail = self._ids(whole[at:])  # text after the last answer (a template's trailer) is not learned
        return Encoded(ids + tail, labels + [IGNORE_INDEX] * len(tail), prompt)

    def _plain_prompt(self, rec: Record) -> str:
        """Without a chat template: the instruction formats for one user/assistant exchange."""
        turns = [t for t in rec.turns if t.role != "system"]
        if len(turns) != 2 or turns[0].role != "user" or turns[1].role != "assistant":
            raise InvalidInput(f"{rec.where}: this model's tokenizer has no chat template, so only one user turn "
                               "then one assistant turn per record can be formatted; use a model with a chat "
                               "template for longer conversations")
        system = "".join(t.content + "\n\n" for t in rec.turns if t.role == "system")
        if rec.kind is RecordKind.ALPACA and rec.input.strip():
            return system + ALPACA_TEMPLATE.format(instruction=rec.instruction, input=rec.input)
        try:
            return system + self.template.format(instruction=turns[0].content)
        except (KeyError, IndexError, ValueError):
            raise InvalidInput("prompt template must contain only the {instruction} placeholder") from None

    def encode(self, rec: Record) -> Encoded:
        if rec.kind is RecordKind.TEXT:
            ids = self._ids(rec.text or "") + self.eos
            if self.seq2seq:
                if len(ids) < 2:
                    raise InvalidInput(f"{rec.where}: text too short to split into input and continuation")
                half = len(ids) // 2
                return Encoded(ids[:half], ids[half:], ids[:half])
            return Encoded(ids, list(ids), [])
        if self.seq2seq:
            return self._seq2seq(rec)
        if self.chat:
            return self._chat(rec)
        prompt = self._ids(self._plain_prompt(rec))
        answer = self._ids(rec.reference) + self.eos
        return Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, prompt)

    def _seq2seq(self, rec: Record) -> Encoded:
        last = max(i for i, t in enumerate(rec.turns) if t.role == "assistant")
        before = rec.turns[:last]
        if self.chat:
            text = self._render(rec, before, True)
        elif rec.kind in (RecordKind.INSTRUCTION, RecordKind.ALPACA):
            text = rec.turns[0].content  # the bare instruction (and Alpaca's input): no template
        else:
            text = "\n".join(f"{t.role}: {t.content}" for t in before)
        enc = self._ids(text) + self.eos
        return Encoded(enc, self._ids(rec.turns[last].content) + self.eos, enc)

    def fit(self, e: Encoded, max_len: int) -> Fitted:
        """``e`` cut to ``max_len`` tokens per side (seq2seq: encoder and targets each)."""
        truncated = len(e.ids) > max_len or (self.seq2seq and len(e.labels) > max_len)
        labels = e.labels[:max_len]
        lost = any(x != IGNORE_INDEX for x in e.labels) and all(x == IGNORE_INDEX for x in labels)
        return Fitted(e.ids[:max_len], labels, truncated, lost)


def pack(streams: list[list[int]], block: int) -> list[list[int]]:
    """Token streams (text records, each ending with EOS) concatenated and cut into blocks of ``block``;
    the last block may be shorter (it is padded, not dropped, so no text is lost)."""
    flat = [t for s in streams for t in s]
    return [flat[i:i + block] for i in range(0, len(flat), block)]

