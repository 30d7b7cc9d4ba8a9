"""Task metrics over (prediction, reference) strings; pure functions, no model.

- ``exact_match``: equal after trimming, case folding and collapsing whitespace (a code like
  ``J45.909`` must be right to the last character);
- ``category_match``: the first three characters agree (an ICD-10-CM category: right chapter and
  condition, wrong detail), for code-like references;
- ``prefix1_match``: the first character agrees (for ICD-10-CM the letter, roughly the chapter:
  the right specialty), for code-like references;
- ``token_f1``: SQuAD's bag-of-tokens F1;
- ``rouge_l``: ROUGE-L F1 (longest common subsequence of tokens; Lin 2004, beta = 1);
- ``choice_accuracy``: multiple choice by log-likelihood (computed in ``task``; here the argmax).

A generation is scored on its first line: a model that adds prose after the answer is judged on
what it answered first, and one that starts with prose is wrong for exact match.
"""

from __future__ import annotations

import re
from collections import Counter

METRICS = ("exact_match", "category_match", "prefix1_match", "token_f1", "rouge_l", "choice_accuracy")
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_/]{0,15}$")


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def normalize(text: str) -> str:
    return " ".join(first_line(text).casefold().split()).strip(" \"'`").rstrip(".")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def category_match(prediction: str, reference: str) -> float:
    p, r = normalize(prediction), normalize(reference)
    return float(len(r) >= 3 and p[:3] == r[:3])


def prefix1_match(prediction: str, reference: str) -> float:
    p, r = normalize(prediction), normalize(reference)
    return float(bool(r) and p[:1] == r[:1])


def token_f1(prediction: str, reference: str) -> float:
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def code_like(references: list[str]) -> bool:
    """Every reference is one short token without spaces (a code, a label): exact match is the metric."""
    return bool(references) and all(_CODE.match(first_line(r)) for r in references)


def choose_metric(references: list[str], has_options: bool, requested: str = "auto") -> str:
    """The task metric: what was asked for, else exact match for codes and labels, multiple-choice
    accuracy for items with options, ROUGE-L for free text."""
    if requested != "auto":
        if requested not in METRICS:
            raise ValueError(f"unknown metric {requested!r}; one of {', '.join(METRICS)}")
        return requested
    if code_like(references):
        return "exact_match"
    return "choice_accuracy" if has_options else "rouge_l"


def score_generations(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean of every generation metric over the pairs (category match only for code-like references)."""
    n = len(references)
    if n == 0 or len(predictions) != n:
        raise ValueError("score_generations: one prediction per reference, at least one")
    out = {"exact_match": sum(map(exact_match, predictions, references)) / n,
           "token_f1": sum(map(token_f1, predictions, references)) / n,
           "rouge_l": sum(map(rouge_l, predictions, references)) / n}
    if code_like(references):
        out["category_match"] = sum(map(category_match, predictions, references)) / n
        out["prefix1_match"] = sum(map(prefix1_match, predictions, references)) / n
    return out
