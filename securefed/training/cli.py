"""``securefed model``: build the built-in preset base model (for trying a deployment by hand), print a
checkpoint's base-model fingerprint (what every party of a federation must agree on), and (from
``securefed.models``) get a packaged real model or import a GGUF file."""

from __future__ import annotations

import argparse
from pathlib import Path

from securefed.errors import InvalidInput
from securefed.models.cli import add_actions as add_real_model_actions
from securefed.training.fingerprint import compute_fingerprint


PRESET_DESCRIPTION = (
    "Build the preset Llama-architecture base model and its byte-level tokenizer into DIR with "
    "save_pretrained, exactly as a real local checkpoint is laid out. Nothing is downloaded. Every "
    "party of a federation must use the same built directory (copy it; do not rebuild per machine)."
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "model",
        help="base models: get a real one (SmolLM2-135M-Instruct, Q4_1 dequantised), import a GGUF, build the "
        "tiny preset, print a fingerprint",
        description=(
            "Base-model checkpoints, all written as save_pretrained directories that server and members load "
            "the same way: `get` converts the real model shipped in an installed package (SmolLM2-135M-Instruct: "
            "its Q4_1 GGUF weights dequantised, not the original bf16 release), `import-gguf` any GGUF file "
            "transformers can load, `preset` builds the tiny test model, `fingerprint` prints what every party "
            "must agree on. Nothing is downloaded."
        ),
    )
    sub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    preset = sub.add_parser("preset", help="build the preset model", description=PRESET_DESCRIPTION)
    preset.add_argument("--out", required=True, type=Path, help="directory to create (must be empty or absent)")
    preset.add_argument("--size", default="tiny", choices=["tiny", "small"],
                        help="tiny: hidden 64, 2 layers (default); small: hidden 256, 4 layers, untrained")
    preset.set_defaults(handler=_preset)
    fp = sub.add_parser(
        "fingerprint", help="print a checkpoint's base-model fingerprint",
        description="SHA-256 over the checkpoint's config.json (architecture keys) and every tensor of its "
        "safetensors files in canonical order (names, dtypes, shapes, bytes), streamed without loading the "
        "model. The server puts it in every round plan; a member whose checkpoint hashes differently declines. "
        "Set it as the server's [model] fingerprint when the server holds only config.json.")
    fp.add_argument("model_dir", type=Path, metavar="DIR", help="a save_pretrained directory")
    fp.set_defaults(handler=_fingerprint)
    add_real_model_actions(sub)


def _preset(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out}: exists and is not an empty directory; choose another --out")
    from securefed.training.preset import build_tiny_model

    print(f"building the {args.size} preset model into {out} ...", flush=True)
    build_tiny_model(out, args.size)
    print(f"done: {out} (load it with base_model_dir = \"{out}\")")
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    print(compute_fingerprint(args.model_dir))
    return 0
