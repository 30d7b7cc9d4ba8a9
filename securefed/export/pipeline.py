"""The export as one function: load the federation's model, write each artefact into a staging directory,
read each back (``checks``), then move the directory into place; nothing half-written is ever left at OUT."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from securefed.errors import ConfigError
from securefed.export import checks
from securefed.export.federated import load_federated
from securefed.export.gguf_file import check_exportable, write_gguf
from securefed.export.merged import merge, save_merged
from securefed.export.peft_dir import save_peft_dir
from securefed.fsutil import share_tree
from securefed.models.gguf_import import probe_ids

MARKER = "securefed-export.json"


def _check_out(out: Path, model_dir: Path) -> None:
    if out == model_dir or model_dir in out.parents:
        raise ConfigError(f"--out {out} lies inside the base model directory; choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ConfigError(f"--out {out}: exists and is not an earlier securefed export; choose another --out")


def _base_tokenizer_pre(model_dir: Path) -> str:
    """llama.cpp's pre-tokenizer name, when the base came from a GGUF (``securefed model get``)."""
    try:
        return str(json.loads((model_dir / "securefed-model.json").read_text())["gguf"].get("tokenizer_pre") or "default")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "default"


def export(model_dir: Path, adapter: Path, out: Path, *, merge_model: bool = False, gguf: bool = False,
           gguf_type: str = "f16", check: bool = True, say: Callable[[str], None] = print) -> dict:
    """Export ``adapter`` on ``model_dir`` into ``out``; returns what ``securefed-export.json`` records."""
    t0 = time.monotonic()
    model_dir, out, adapter = Path(model_dir).resolve(), Path(out).resolve(), Path(adapter)
    _check_out(out, model_dir)
    fed = load_federated(model_dir, adapter)
    if gguf:
        check_exportable(fed.model.get_base_model())  # before any work: refuse a non-Llama at once
    lora = fed.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(lora.target_modules)
    say(f"adapter {adapter}: round {fed.round if fed.round is not None else '?'}, LoRA r={lora.rank} "
        f"alpha={lora.alpha:g} on {targets}{' (FFA-LoRA)' if lora.freeze_a else ''}, {fed.bundle.vector.size:,} "
        f"parameters; base {model_dir} (fingerprint matches)")
    ids = probe_ids(fed.tokenizer)
    reference = checks.logits(fed.model, ids)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict = {"adapter_file": str(adapter.resolve()), "adapter_digest": fed.bundle.digest, "round": fed.round,
                    "base_model_dir": str(model_dir), "lora": lora.model_dump(mode="json"), "artefacts": {}}
    try:
        save_peft_dir(fed.model, tmp / "adapter", base_model_dir=model_dir)
        note = ""
        if check:
            diff = checks.check_peft_dir(model_dir, tmp / "adapter", ids, reference)
            note = f" (checked: PeftModel.from_pretrained gives the same logits, max |diff| {diff:.2g})"
        record["artefacts"]["adapter"] = "adapter"
        say(f"PEFT adapter: {out / 'adapter'}{note}")
        if merge_model or gguf:
            merged = merge(fed)
            if merge_model:
                save_merged(merged, fed.tokenizer, model_dir, tmp / "merged")
                note = ""
                if check:
                    diff = checks.check_merged(tmp / "merged", ids, reference)
                    note = f" (checked: logits match base + adapter, max |diff| {diff:.2g})"
                record["artefacts"]["merged"] = "merged"
                say(f"merged checkpoint: {out / 'merged'}{note}")
            if gguf:
                name = f"model-{gguf_type}.gguf"
                write_gguf(merged, fed.tokenizer, tmp / name, ftype=gguf_type,
                           name=f"{model_dir.name} + securefed adapter", tokenizer_pre=_base_tokenizer_pre(model_dir))
                note = ""
                if check:
                    g = checks.check_gguf(tmp / name, merged, fed.tokenizer, exact=gguf_type == "f32")
                    note = (f" (checked with transformers' GGUF loader: {g.identical}/{g.prompts} greedy generations "
                            f"identical to the merged model's, max |logit diff| {g.max_abs_logit_diff:.2g})")
                    record["gguf_check"] = {"identical": g.identical, "prompts": g.prompts,
                                            "max_abs_logit_diff": g.max_abs_logit_diff}
                record["artefacts"]["gguf"] = name
                say(f"GGUF ({gguf_type}): {out / name}{note}")
        (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        share_tree(tmp)
        if out.exists():
            shutil.rmtree(out)  # an earlier export (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"done in {time.monotonic() - t0:.0f} s -> {out}")
    if "gguf" in record["artefacts"]:
        say(f"llama.cpp: llama-cli -m {out / record['artefacts']['gguf']}  |  Ollama: a Modelfile with "
             f"FROM {out / record['artefacts']['gguf']}")
    return record
