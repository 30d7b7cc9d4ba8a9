"""``securefed eval --model DIR [--adapter FILE] --data FILE [--json]``: how good is a model on the task.

Held-out loss and perplexity on the answer tokens (what training learns: the assistant's turns) and
the task metric from greedy generations with a fixed budget: exact match for codes and labels (plus
the category, i.e. the first three characters, for codes), token F1 and ROUGE-L for free text, and
multiple-choice log-likelihood accuracy for records with ``options``. Deterministic: greedy decoding,
fixed batches, the checkpoint's own sampling settings ignored.

ADAPTER is the global adapter file securefed writes (``final_adapter.safetensors`` of the demo, the
server's ``global-rNNNNNN.safetensors`` checkpoints, a member's copy) or a PEFT adapter directory;
without it the base model is evaluated. DATA is JSONL in any format members train on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from securefed.errors import ConfigError
from securefed.evaluation.metrics import METRICS


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="held-out perplexity and the task metric of a model (+ adapter)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="base model (save_pretrained directory)")
    p.add_argument("--adapter", type=Path, metavar="FILE",
                   help="securefed's global adapter file (.safetensors) or a PEFT adapter directory")
    p.add_argument("--data", required=True, type=Path, metavar="FILE", help="held-out records (JSONL)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N records only")
    p.add_argument("--metric", default="auto", choices=["auto", *METRICS],
                   help="the task metric (auto: exact match for codes and labels, choice accuracy for records "
                   "with options, ROUGE-L for free text)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="generation budget per record (default 16)")
    p.add_argument("--max-seq-len", type=int, default=256, help="tokens per record for the loss (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="records per forward pass (default 16)")
    p.add_argument("--no-generate", action="store_true", help="loss, perplexity and choice accuracy only")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--json", action="store_true", help="print one JSON object (for audit report --metrics)")
    p.set_defaults(handler=_eval)


def _check(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit: at least 1")
    if not 1 <= args.max_new_tokens <= 4096:
        raise ConfigError("--max-new-tokens: 1..4096")
    if not 8 <= args.max_seq_len <= 65536:
        raise ConfigError("--max-seq-len: 8..65536")
    if not 1 <= args.batch_size <= 4096:
        raise ConfigError("--batch-size: 1..4096")


def _eval(args: argparse.Namespace) -> int:
    _check(args)
    # torch, transformers and peft load here, not when `securefed --help` registers the command.
    from securefed.client.progress import Progress
    from securefed.data.records import read_jsonl
    from securefed.evaluation.loading import load_for_eval
    from securefed.evaluation.task import evaluate_records
    from securefed.training.config import ModelSettings

    records = read_jsonl(args.data)
    if args.limit:
        records = records[:args.limit]
    settings = ModelSettings(device=args.device, dtype="fp32")
    print(f"loading {args.model}{' + ' + str(args.adapter) if args.adapter else ''} ...", file=sys.stderr, flush=True)
    em = load_for_eval(args.model, args.adapter, settings)
    lm = em.loaded
    with Progress("generating", len(records), "record") as prog:
        result = evaluate_records(lm.model, lm.tokenizer, records, kind=lm.kind, max_seq_len=args.max_seq_len,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, metric=args.metric,
                                  generate=not args.no_generate, progress=prog.update)
    out = {"model": str(args.model), "adapter": em.adapter, "adapter_kind": em.adapter_kind, "data": str(args.data),
           **result.to_dict()}
    if not math.isfinite(out["perplexity"]):
        out["perplexity"] = None
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{result.records} records of {args.data}" + (f" ({result.truncated} truncated to --max-seq-len)"
                                                       if result.truncated else ""))
    print(f"loss {result.loss:.4f}, perplexity {result.perplexity:.3f} (answer tokens)")
    if result.metric:
        print(f"task metric: {result.metric} = {result.task_metric:.4f}"
              + (f" (greedy, {result.max_new_tokens} new tokens at most)" if result.max_new_tokens else ""))
        for k, v in sorted(result.metrics.items()):
            if k != result.metric:
                print(f"  {k} = {v:.4f}")
        for s in result.samples[:3]:
            print(f"  e.g. expected {s['reference']!r}, generated {s['generated']!r}")
    return 0
