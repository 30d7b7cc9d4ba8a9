"""Clinical coding on ICD-10-CM, split by specialty: the shipped real task.

The source is the ICD-10-CM tabular list (CDC/NCHS, a work of the US government: public domain)
as shipped in the ``simple_icd_10_cm`` wheel (MIT licence; installed offline by the project's
setup, nothing is downloaded). Every billable code (a leaf of the tabular list) gives one item per
phrase that names it: its description and each of its inclusion terms. An item becomes a chat record::

    system:    You are a clinical coder. Reply with the ICD-10-CM code only.
    user:      ICD-10-CM code for: Unspecified asthma, uncomplicated
    assistant: J45.909

Non-IID by chapter (= specialty): whole chapters go to members, the largest first to the member with
the fewest codes so far. Within each chapter codes are ordered by a seeded hash (public, *not
secret*: this is a data split, not a key); whole categories (the first three characters), in
seeded-hash order, are kept until a chapter has ``max_per_chapter`` codes (the injury and
external-cause chapters alone hold 65% of all codes), so a kept code's siblings are kept too; a share of them is the global held-out split
no member trains on, a further share each member's own held-out split, the rest its training data.
Codes, not phrases, are split, so a held-out code was never seen in training under any phrase: the
model has to generalise from its siblings (``S72.321A`` from ``S72.322A``, ``S72.321D``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from dataclasses import dataclass, field

from securefed.errors import ConfigError

try:  # the `tasks` extra (installed by the project's lock)
    import simple_icd_10_cm as icd
except ImportError:  # pragma: no cover - only without the extra
    icd = None

SYSTEM_PROMPT = "You are a clinical coder. Reply with the ICD-10-CM code only."
QUESTION = "ICD-10-CM code for: {term}"
SOURCE = ("ICD-10-CM tabular list (CDC National Center for Health Statistics; US government work, public "
          "domain) from the simple_icd_10_cm wheel (MIT licence)")


@dataclass(frozen=True, slots=True)
class Item:
    code: str
    term: str
    chapter: int
    source: str  # "description" or "inclusion term"


@dataclass(frozen=True)
class MemberSplit:
    name: str
    chapters: tuple[int, ...]
    train: tuple[Item, ...]
    heldout: tuple[Item, ...]


@dataclass(frozen=True)
class Icd10Split:
    members: tuple[MemberSplit, ...]
    heldout: tuple[Item, ...]  # the global held-out split: every chapter, no member trains on it
    chapter_titles: dict[int, str] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)


def _require() -> None:
    if icd is None:
        raise ConfigError("the ICD-10-CM task needs the simple_icd_10_cm package: `make venv` installs it "
                          "(pip install 'securefed[tasks]')")


def source_version() -> str:
    _require()
    return f"simple_icd_10_cm {importlib.metadata.version('simple_icd_10_cm')}"


def chapter_titles() -> dict[int, str]:
    _require()
    return {int(c): icd.get_description(c) for c in icd.get_all_codes(True) if icd.is_chapter(c)}


def tabular_items() -> list[Item]:
    """One item per (billable code, phrase): its description and each inclusion term."""
    _require()
    items: list[Item] = []
    seen: set[str] = set()
    for code in icd.get_all_codes(True):
        # A few names are both a block and its only category (B20, F99, ...): listed twice, one code.
        if code in seen or not (icd.is_category_or_subcategory(code) and icd.is_leaf(code)):
            continue
        seen.add(code)
        chapter = int(icd.get_ancestors(code)[-1])
        items.append(Item(code, icd.get_description(code), chapter, "description"))
        for term in icd.get_inclusion_term(code):
            if term.strip() and term != items[-1].term:
                items.append(Item(code, term.strip(), chapter, "inclusion term"))
    return items


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"securefed-icd10:{seed}:{key}".encode()).digest()  # not secret: a public data split


def split_items(items: list[Item], members: int, *, seed: int = 0, max_per_chapter: int | None = 2000,
                heldout_fraction: float = 0.05, member_heldout_fraction: float = 0.05,
                titles: dict[int, str] | None = None) -> Icd10Split:
    """Assign whole chapters to ``members`` members and split codes into global held-out, member
    held-out and training sets (see the module docstring). Deterministic in ``seed``."""
    if members < 1:
        raise ConfigError("--members: at least 1")
    if not (0 < heldout_fraction < 0.5 and 0 <= member_heldout_fraction < 0.5):
        raise ConfigError("held-out fractions: the global one in (0, 0.5), the members' in [0, 0.5)")
    if max_per_chapter is not None and max_per_chapter < 10:
        raise ConfigError("--max-per-chapter: at least 10 codes (or 0 for every code)")
    by_code: dict[str, list[Item]] = {}
    for it in items:
        by_code.setdefault(it.code, []).append(it)
    chapters: dict[int, list[str]] = {}
    for code, its in by_code.items():
        chapters.setdefault(its[0].chapter, []).append(code)
    if members > len(chapters):
        raise ConfigError(f"--members {members}: the list has only {len(chapters)} chapters to deal out")
    for ch in chapters:
        if max_per_chapter:  # whole categories, so that a code's siblings come along
            kept: list[str] = []
            for cat in sorted({c[:3] for c in chapters[ch]}, key=lambda c: _rank(seed, c)):
                if len(kept) >= max_per_chapter:
                    break
                kept += [c for c in chapters[ch] if c[:3] == cat]
            chapters[ch] = kept
        chapters[ch].sort(key=lambda c: _rank(seed, c))
    # Largest chapter first, to the member with the fewest codes so far (ties: the lower number).
    load = [0] * members
    owned: list[list[int]] = [[] for _ in range(members)]
    for ch in sorted(chapters, key=lambda c: (-len(chapters[c]), c)):
        m = min(range(members), key=lambda i: (load[i], i))
        owned[m].append(ch)
        load[m] += len(chapters[ch])
    glob: list[str] = []
    out = []
    for m in range(members):
        train, held = [], []
        for ch in sorted(owned[m]):
            codes = chapters[ch]
            g = math.ceil(heldout_fraction * len(codes))
            h = math.ceil(member_heldout_fraction * len(codes)) if member_heldout_fraction else 0
            glob += codes[:g]
            held += codes[g:g + h]
            train += codes[g + h:]
        order = lambda codes: tuple(sorted((it for c in codes for it in by_code[c]),  # noqa: E731
                                           key=lambda it: _rank(seed, it.code + "\x00" + it.term)))
        out.append(MemberSplit(f"member-{m + 1}", tuple(sorted(owned[m])), order(train), order(held)))
    heldout = tuple(sorted((it for c in glob for it in by_code[c]), key=lambda it: _rank(seed, it.code + "\x00" + it.term)))
    params = {"members": members, "seed": seed, "max_per_chapter": max_per_chapter or 0,
              "heldout_fraction": heldout_fraction, "member_heldout_fraction": member_heldout_fraction}
    return Icd10Split(tuple(out), heldout, dict(titles or {}), params)


def chapter_codes(items: list[Item], seed: int = 0) -> dict[int, list[str]]:
    """Every code of each chapter in seeded-hash order: the pool multiple-choice distractors come from."""
    pool: dict[int, set[str]] = {}
    for it in items:
        pool.setdefault(it.chapter, set()).add(it.code)
    return {ch: sorted(codes, key=lambda c: _rank(seed, c)) for ch, codes in pool.items()}


def options(item: Item, pool: dict[int, list[str]], k: int, seed: int) -> list[str]:
    """``k`` candidate codes: the answer and ``k - 1`` codes of the item's chapter from other categories
    (first three characters), read from the chapter's shuffled pool at a place the item's hash picks,
    and ordered by seeded hash so the answer's place varies."""
    codes = pool[item.chapter]
    start = int.from_bytes(_rank(seed, item.code + "|" + item.term)[:8], "big") % len(codes)
    others: list[str] = []
    for i in range(len(codes)):
        c = codes[(start + i) % len(codes)]
        if c[:3] != item.code[:3] and c not in others:
            others.append(c)
            if len(others) == k - 1:
                break
    return sorted([item.code, *others], key=lambda c: _rank(seed, item.term + "|" + c))


def record(item: Item, choices: list[str] | None = None) -> dict:
    """The chat record of one item (``choices``: multiple-choice candidates, the answer among them)."""
    rec: dict = {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                              {"role": "user", "content": QUESTION.format(term=item.term)},
                              {"role": "assistant", "content": item.code}]}
    if choices and len(choices) >= 2:
        rec["options"] = choices
    rec["meta"] = {"code": item.code, "chapter": item.chapter, "source": item.source}
    return rec


def records(items, *, pool: dict[int, list[str]] | None = None, k: int = 0, seed: int = 0) -> list[dict]:
    """Chat records of ``items``, with ``k`` options each when ``k`` and ``pool`` are given."""
    if not (k and pool):
        return [record(it) for it in items]
    return [record(it, options(it, pool, k, seed)) for it in items]
