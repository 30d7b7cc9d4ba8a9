"""``securefed model get NAME --out DIR`` and ``securefed model import-gguf FILE --out DIR``: a real base
model as a checkpoint directory, converted once from a GGUF and checked against it."""

from __future__ import annotations

import argparse
from pathlib import Path

from securefed.models.sources import PACKAGED, SMOLLM2, known_names, locate, lookup

GET_HELP = (
    "Convert a model that ships inside an installed package into a safetensors checkpoint directory "
    "(config, weights, tokenizer with its chat template, generation config) that `securefed server`, "
    "`securefed client` and `securefed demo --model DIR` load like any checkpoint. Nothing is downloaded: "
    "the file comes from the package the project's setup installed (hash-pinned in requirements.lock) and is "
    "checked against the SHA-256 that package recorded. The conversion is checked (the written checkpoint's "
    "logits must equal the GGUF load's, bit for bit) and prints the base-model fingerprint every party of a "
    "federation must share; running it again on the same directory only re-checks it. Known models: "
    + "; ".join(f"{m.name} = {m.title} from the package {m.distribution}=={m.version}: {m.weights_note}"
                for m in PACKAGED.values())
)

IMPORT_HELP = (
    "Convert any GGUF file whose architecture transformers can load from GGUF (llama, mistral, qwen2, qwen3, "
    "gemma2/gemma3, phi3, ...) into a safetensors checkpoint directory, checked like `model get`. Quantized "
    "tensors are dequantised to float32: the result is the quantized model, not the original full-precision "
    "release. Needs the `gguf` package (installed by the project's setup)."
)


def add_actions(sub) -> None:
    """Add ``get`` and ``import-gguf`` to the ``securefed model`` subcommands."""
    get = sub.add_parser("get", help=f"convert a packaged real model (e.g. {SMOLLM2.name}, Q4_1 dequantised) "
                         "into a checkpoint directory", description=GET_HELP)
    get.add_argument("name", metavar="NAME", help=f"the model: {', '.join(known_names())}")
    get.add_argument("--out", required=True, type=Path, help="directory to write (absent or empty; a second run "
                     "on the directory it wrote checks it and does nothing)")
    get.set_defaults(handler=_get)
    imp = sub.add_parser("import-gguf", help="convert a GGUF file into a checkpoint directory", description=IMPORT_HELP)
    imp.add_argument("file", type=Path, metavar="FILE", help="the .gguf file")
    imp.add_argument("--out", required=True, type=Path, help="directory to write (absent or empty)")
    imp.set_defaults(handler=_import)


def _say(msg: str) -> None:
    print(f"[model] {msg}", flush=True)


def get_model(name: str, out: Path, say=_say):
    """``securefed model get``: the packaged model ``name`` converted into ``out`` (or found there)."""
    from securefed.models.gguf_import import import_gguf

    model = lookup(name)
    path, _ = locate(model)
    say(f"{model.title}")
    say(f"weights: {model.weights_note}")
    result = import_gguf(path, out, say=say, weights_note=model.weights_note, title=model.title)
    if not result.converted:
        say(f"{result.out_dir} already holds this conversion (fingerprint re-checked); nothing to do")
    if model.fingerprint and result.fingerprint != model.fingerprint:
        say(f"WARNING: the fingerprint differs from the one securefed recorded for {model.name} "
            f"({model.fingerprint[:16]}...; other library versions than requirements.lock's?): members that "
            "convert on their own would decline each other's plans; copy this one directory to every party")
    elif model.fingerprint:
        say(f"fingerprint matches the one securefed recorded for {model.name}")
    return result


def _report(result) -> int:
    if result.converted:
        _say(f"wrote {result.out_dir} in {result.seconds:.0f} s")
    _say(f"base-model fingerprint: {result.fingerprint}")
    _say(f"use it: base_model_dir = \"{result.out_dir}\" (server and members), or securefed demo --model {result.out_dir}")
    return 0


def _get(args: argparse.Namespace) -> int:
    return _report(get_model(args.name, args.out))


def _import(args: argparse.Namespace) -> int:
    from securefed.models.gguf_import import import_gguf

    result = import_gguf(args.file, args.out, say=_say)
    if not result.converted:
        _say(f"{result.out_dir} already holds this conversion (fingerprint re-checked); nothing to do")
    return _report(result)
