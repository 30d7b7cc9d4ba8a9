"""Regenerate the checked-in gRPC/protobuf stubs: ``python -m securefed.transport.codegen``.

Reads ``protocols/securefed/v1/*.proto`` and writes ``securefed/transport/_generated/``:
``<name>_pb2.py``, ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py`` for each file.

protoc names modules after the proto path (``securefed/v1/federation.proto`` ->
``securefed.v1.federation_pb2``) and emits absolute imports such as
``from securefed.v1 import secagg_pb2``. That would collide with our own ``securefed`` package,
so the files are flattened into one directory and those imports rewritten to package-relative ones
(``from . import secagg_pb2``). The proto file names registered in the descriptor pool stay
``securefed/v1/...``, so they cannot clash with anyone else's ``federation.proto``.

``--check`` regenerates into a temporary directory and exits 1 if the checked-in files differ;
tests/transport/test_transport_codegen.py runs the same comparison.

protoc runs in a child process: grpcio-tools carries its own copy of the protobuf C++ runtime, and
a process that has loaded it aborts or crashes when TenSEAL (which links another copy) loads after
it, as happened when the stub check and a CKKS test shared a pytest worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from securefed.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_ROOT = REPO_ROOT / "protocols"
PROTO_SUBDIR = Path("securefed") / "v1"
GENERATED_DIR = PACKAGE_DIR / "_generated"
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# `from securefed.v1 import secagg_pb2 as x` / `import securefed.v1.secagg_pb2` -> relative form.
_FROM_IMPORT = re.compile(r"^from securefed\.v1 import (\w+_pb2)\b", re.MULTILINE)
_PLAIN_IMPORT = re.compile(r"^import securefed\.v1\.(\w+_pb2)\b", re.MULTILINE)

_INIT_TEXT = '''"""Generated protobuf/gRPC stubs for securefed.v1. Do not edit: run
``python -m securefed.transport.codegen`` after changing protocols/securefed/v1/*.proto."""
'''


def proto_files() -> list[Path]:
    """The .proto files of the wire protocol, relative to PROTO_ROOT, sorted."""
    files = sorted((PROTO_ROOT / PROTO_SUBDIR).glob("*.proto"))
    if not files:
        raise ConfigError(f"no .proto files under {PROTO_ROOT / PROTO_SUBDIR}; is this a source checkout?")
    return [f.relative_to(PROTO_ROOT) for f in files]


def _fix_imports(text: str) -> str:
    text = _FROM_IMPORT.sub(r"from . import \1", text)
    return _PLAIN_IMPORT.sub(r"from . import \1", text)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and write the flattened, import-fixed stubs into out_dir."""
    spec = importlib.util.find_spec("grpc_tools")  # dev-only dependency: only needed to regenerate
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - depends on the environment
        raise ConfigError("grpcio-tools is not installed; install the dev extras: pip install -e '.[dev]'")
    well_known = str(Path(next(iter(spec.submodule_search_locations))) / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="securefed-protoc-") as raw:
        args = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *[str(p) for p in proto_files()],
        ]
        code = subprocess.run(args, check=False).returncode
        if code != 0:
            raise ConfigError(f"protoc failed (exit {code}) on {PROTO_ROOT / PROTO_SUBDIR}; see its message above")
        written: list[Path] = []
        for src in sorted((Path(raw) / PROTO_SUBDIR).iterdir()):
            if not src.name.endswith(_GENERATED_SUFFIXES):
                continue
            dst = out_dir / src.name
            dst.write_text(_fix_imports(src.read_text(encoding="utf-8")), encoding="utf-8")
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text(_INIT_TEXT, encoding="utf-8")
    written.append(init)
    return sorted(written)


def stale_files(generated_dir: Path = GENERATED_DIR) -> list[str]:
    """Names of stub files that differ from a fresh generation (missing, extra or changed)."""
    with tempfile.TemporaryDirectory(prefix="securefed-codegen-check-") as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if p.is_file()}
    current = {
        p.name: p.read_bytes()
        for p in generated_dir.iterdir()
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(_GENERATED_SUFFIXES))
    }
    return sorted(name for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m securefed.transport.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in stubs are out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run python -m securefed.transport.codegen", file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    # Write to a scratch dir first so a failed protoc run never leaves a half-written package.
    with tempfile.TemporaryDirectory(prefix="securefed-codegen-") as tmp:
        files = generate(Path(tmp))
        for old in GENERATED_DIR.glob("*"):
            if old.is_file() and (old.name == "__init__.py" or old.name.endswith(_GENERATED_SUFFIXES)):
                old.unlink()
        GENERATED_DIR.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, GENERATED_DIR / f.name)
    print(f"wrote {len(files)} files to {GENERATED_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
