"""``securefed export --model DIR --adapter FILE --out DIR [--merge] [--gguf]``: the federation's adapter in
the formats serving tools read, each read back and checked before the command says it is done."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Write the global adapter a federation produced (FILE: the securefed adapter bundle, e.g. the demo's "
    "final_adapter.safetensors, the server's state_dir/checkpoints/global-rNNNNNN.safetensors or a member's "
    "state_dir/global/adapter.safetensors) for serving, into OUT:\n"
    "  OUT/adapter/   a PEFT adapter directory: PeftModel.from_pretrained(base, 'OUT/adapter') (always);\n"
    "  OUT/merged/    --merge: a transformers checkpoint with the adapter merged in (merge_and_unload), no PEFT needed;\n"
    "  OUT/model-f16.gguf  --gguf: for llama.cpp and Ollama (Llama-architecture models; --gguf-type f32 for full "
    "precision).\n"
    "DIR must be the federation's base checkpoint (its fingerprint is checked against the one the adapter records). "
    "Each artefact is read back with the library that serves it (peft, transformers, transformers' GGUF loader) and "
    "compared with base + adapter before the command reports success; --no-check skips that."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a federation's adapter as a PEFT directory, a merged checkpoint or a GGUF",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="the federation's base checkpoint directory")
    p.add_argument("--adapter", required=True, type=Path, metavar="FILE", help="the global adapter file securefed wrote")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (absent, empty, or an earlier "
                   "export's, which is replaced)")
    p.add_argument("--merge", action="store_true", help="also write a merged transformers checkpoint (OUT/merged)")
    p.add_argument("--gguf", action="store_true", help="also write a GGUF file of the merged model (Llama architecture)")
    p.add_argument("--gguf-type", choices=["f16", "f32"], default="f16", help="GGUF tensor type (default f16)")
    p.add_argument("--no-check", action="store_true", help="do not read the artefacts back to check them")
    p.set_defaults(handler=_export)


def _say(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


def _export(args: argparse.Namespace) -> int:
    from securefed.export.pipeline import export

    export(args.model, args.adapter, args.out, merge_model=args.merge, gguf=args.gguf, gguf_type=args.gguf_type,
           check=not args.no_check, say=_say)
    return 0
