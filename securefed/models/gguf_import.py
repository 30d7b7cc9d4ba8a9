"""A GGUF file converted once into a safetensors checkpoint directory, checked against the GGUF itself.

transformers loads a GGUF (``from_pretrained(dir, gguf_file=...)``, through the ``gguf`` package),
dequantising every tensor to float32, but refuses to ``save_pretrained`` it ("quantized with gguf and
is not serializable"). So the dequantised state dict is moved into a plain model built from the same
config on the meta device (no second copy, no random initialisation) and that one is saved, with the
tokenizer (and its chat template) and the generation config. The written directory is then loaded
the way every member loads its base (:func:`securefed.training.model.load_model`) and its logits on
a probe must equal the GGUF load's exactly, and its tokenizer must encode the probe the same way;
anything else is refused and nothing is left behind.

The directory is written next to its destination and renamed into place at the end, files 0644 and
directories 0755 whatever the umask (the daemons often run as other users). ``securefed-model.json``
records the source file's SHA-256 and the checkpoint's fingerprint: a second run with the same source
checks the fingerprint and does nothing.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
from transformers.utils import logging as hf_logging

from securefed.errors import ModelError
from securefed.fsutil import share_tree
from securefed.models.sources import sha256_file
from securefed.training.families import model_kind
from securefed.training.fingerprint import compute_fingerprint
from securefed.training.model import auto_class, load_model, load_tokenizer, tie_head
from securefed.versions import version_of

MANIFEST = "securefed-model.json"
MANIFEST_FORMAT = "securefed-model/v1"
# Keys of transformers' GGUF table that are not architectures.
_NOT_ARCHITECTURES = {"general", "tokenizer"}
# The probe every conversion is checked on: plain text, and a chat turn where the tokenizer has a template.
PROBE_TEXT = "Federated learning lets hospitals fine-tune one model without pooling their records. 12345"
PROBE_CHAT = [{"role": "user", "content": "What is the capital of France?"}]

Say = Callable[[str], None]


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    name: str
    license: str
    file_type: str
    tensor_types: dict[str, int]  # GGML type name -> how many tensors
    tensors: int
    tokenizer_pre: str = "default"  # llama.cpp's pre-tokenizer name; an export to GGUF writes it back


@dataclass(frozen=True)
class ImportResult:
    out_dir: Path
    fingerprint: str
    converted: bool  # False: the directory already held this conversion (checked)
    seconds: float
    info: GgufInfo
    parameters: int = 0
    probe_tokens: int = 0


def supported_architectures() -> list[str]:
    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_ARCHITECTURES)


def _field(reader, key: str, default: str = "") -> str:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        v = f.contents()
    except Exception:  # noqa: BLE001 - a malformed optional field is only left out
        return default
    return str(v) if v is not None else default


def read_info(path: Path) -> GgufInfo:
    """Architecture and quantization of a GGUF file, from its header (memory-mapped, nothing dequantised);
    one-line ``ModelError`` for a file that is not GGUF or an architecture transformers cannot load."""
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError/struct errors on anything not GGUF
        raise ModelError(f"{path}: not a readable GGUF file ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    arch = _field(reader, "general.architecture")
    supported = supported_architectures()
    if arch not in supported:
        raise ModelError(f"{path}: GGUF architecture {arch or '(none)'!r} is not one transformers "
                         f"{transformers.__version__} can load from GGUF (it loads: {', '.join(supported)}); "
                         "convert that model to a safetensors checkpoint another way")
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    ft = _field(reader, "general.file_type")
    try:
        ft = gguf.LlamaFileType(int(ft)).name.removeprefix("MOSTLY_") if ft else "unknown"
    except ValueError:
        ft = f"type {ft}"
    return GgufInfo(architecture=arch, name=_field(reader, "general.name", path.stem),
                    license=_field(reader, "general.license", "unknown"), file_type=ft,
                    tensor_types=dict(sorted(counts.items())), tensors=len(reader.tensors),
                    tokenizer_pre=_field(reader, "tokenizer.ggml.pre", "default"))


def describe_types(info: GgufInfo) -> str:
    return ", ".join(f"{k} x {v}" for k, v in sorted(info.tensor_types.items(), key=lambda kv: -kv[1]))


def import_gguf(path: str | Path, out_dir: str | Path, *, say: Say = print, weights_note: str = "",
                title: str = "") -> ImportResult:
    """Convert ``path`` into the checkpoint directory ``out_dir`` (a no-op when it already holds it)."""
    t0 = time.monotonic()
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    info = read_info(path)
    source_sha = sha256_file(path)
    done = _existing(out_dir, source_sha, info, t0)
    if done is not None:
        return done
    hf_logging.disable_progress_bar()
    say(f"{path.name}: {info.architecture}, {info.tensors} tensors ({describe_types(info)}); "
        "loading with transformers, dequantised to float32 ...")
    kind = model_kind(_gguf_config(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gguf_model = auto_class(kind).from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                          local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers/gguf raise many types for files they cannot read
            raise ModelError(f"{path}: transformers cannot load this GGUF ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    gguf_model.eval()
    # transformers' loader can leave a tied head untied and newly initialised (we have seen its load report
    # say "lm_head.weight MISSING" in a long-lived process): tie it, or the check would compare against noise.
    tie_head(gguf_model, gguf_model.config)
    params = sum(p.numel() for p in gguf_model.parameters())
    say(f"loaded {params / 1e6:.1f}M parameters in {time.monotonic() - t0:.0f} s; writing the checkpoint ...")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_plain(gguf_model, tokenizer, kind, tmp)
        n_probe = _check(tmp, gguf_model, tokenizer, say)
        fingerprint = compute_fingerprint(tmp)
        manifest = {"format": MANIFEST_FORMAT, "source_file": path.name, "source_sha256": source_sha,
                    "fingerprint": fingerprint, "gguf": asdict(info), "weights": weights_note or
                    f"the GGUF's {info.file_type} weights dequantised to float32", "dtype": "float32",
                    "parameters": params, "transformers": version_of("transformers"), "gguf_package": version_of("gguf"),
                    "torch": version_of("torch")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(_model_card(title or info.name, info, manifest))
        share_tree(tmp)  # the daemons often run as other users
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked by _existing): replaced by the finished directory
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ImportResult(out_dir, fingerprint, True, time.monotonic() - t0, info, params, n_probe)


def _gguf_config(path: Path):
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: transformers cannot read this GGUF's model config ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


def _existing(out_dir: Path, source_sha: str, info: GgufInfo, t0: float) -> ImportResult | None:
    """The finished conversion already in ``out_dir`` (fingerprint re-checked), None when ``out_dir`` is
    absent or empty; refuses any other content."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise ModelError(f"{out_dir}: exists and is not a directory; choose another --out")
    if not any(out_dir.iterdir()):
        return None
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        recorded_source, recorded_fp = manifest["source_sha256"], manifest["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{out_dir}: exists and was not written by securefed model get/import-gguf; "
                         "choose another --out (nothing was changed)") from None
    if recorded_source != source_sha:
        raise ModelError(f"{out_dir}: holds the conversion of another file ({manifest.get('source_file')}); "
                         "choose another --out, or delete it to convert this one")
    fp = compute_fingerprint(out_dir)
    if fp != recorded_fp:
        raise ModelError(f"{out_dir}: its weights or config changed since securefed wrote them (fingerprint "
                         f"{fp[:16]}, recorded {recorded_fp[:16]}); delete it and run again")
    return ImportResult(out_dir, fp, False, time.monotonic() - t0, info, int(manifest.get("parameters", 0)))


def _write_plain(gguf_model, tokenizer, kind, tmp: Path) -> None:
    """``gguf_model``'s tensors saved through a model transformers will serialise."""
    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.name_or_path = ""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = auto_class(kind).from_config(config, dtype=torch.float32)
    # assign: the plain model takes the dequantised tensors themselves (no copy into meta tensors).
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    tie_head(plain, config)
    meta = [n for n, t in plain.state_dict().items() if t.is_meta]
    if meta:
        raise ModelError(f"the GGUF gave no values for {', '.join(meta[:3])}; not converted")
    gen = gguf_model.generation_config
    plain.generation_config = GenerationConfig(bos_token_id=gen.bos_token_id, eos_token_id=gen.eos_token_id,
                                               pad_token_id=gen.pad_token_id)
    tmp.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    _drop_invented_tokens(tmp / "tokenizer.json", config.vocab_size)


def _drop_invented_tokens(tokenizer_json: Path, vocab_size: int) -> None:
    """Remove added tokens with ids past the model's vocabulary from the saved tokenizer.

    transformers builds a byte-level GGUF tokenizer with ``GPT2Tokenizer``, whose constructor adds its
    default ``<|endoftext|>`` when the file's vocabulary lacks it (Llama 3, or any BPE that names its end
    token otherwise): one token more than the model embeds, which no GGUF reader but transformers has and
    which members would refuse. The file's own tokens all have ids below ``vocab_size``."""
    if not tokenizer_json.is_file():
        return
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    added = spec.get("added_tokens") or []
    kept = [a for a in added if int(a.get("id", 0)) < vocab_size]
    if len(kept) != len(added):
        spec["added_tokens"] = kept
        tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")


def probe_ids(tokenizer) -> list[int]:
    """Token ids of the probe: the chat turn rendered with the tokenizer's template, then plain text."""
    ids: list[int] = []
    if getattr(tokenizer, "chat_template", None):
        ids += list(tokenizer.apply_chat_template(PROBE_CHAT, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    ids += tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    return ids


def _check(tmp: Path, gguf_model, gguf_tokenizer, say: Say) -> int:
    """The written checkpoint, loaded as members load it, must equal the GGUF load: the same probe ids
    from its tokenizer, bit-identical logits from its weights."""
    ids = probe_ids(gguf_tokenizer)
    written_tok = load_tokenizer(tmp)
    if probe_ids(written_tok) != ids:
        raise ModelError(f"{tmp}: the written tokenizer encodes the probe differently from the GGUF's; not converted")
    loaded = load_model(tmp)
    x = torch.tensor([ids])
    with torch.no_grad():
        want = gguf_model(input_ids=x).logits
        got = loaded.model.eval()(input_ids=x).logits
    if not torch.equal(want, got):
        diff = float((want - got).abs().max())
        raise ModelError(f"the written checkpoint's logits differ from the GGUF load's (max |diff| {diff:.3g}); "
                         "not converted")
    say(f"checked: logits of the written checkpoint equal the GGUF load's on {len(ids)} probe tokens "
        "(bit for bit), and its tokenizer encodes the probe identically")
    return len(ids)


def _model_card(title: str, info: GgufInfo, manifest: dict) -> str:
    return (f"# {title}\n\n"
            f"Converted by `securefed` from `{manifest['source_file']}` (SHA-256 `{manifest['source_sha256']}`).\n\n"
            f"**Weights:** {manifest['weights']}.\n\n"
            f"- architecture: {info.architecture}; GGUF tensor types: {describe_types(info)}\n"
            f"- parameters: {manifest['parameters']:,}; stored as float32 safetensors\n"
            f"- license (from the GGUF): {info.license}\n"
            f"- base-model fingerprint (`securefed model fingerprint`): `{manifest['fingerprint']}`\n")
