"""The ``securefed`` command line: one front door, subcommands registered by their own packages.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``handler`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Registration must stay cheap: heavy imports (torch, tenseal, grpc) happen inside handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from securefed import __version__
from securefed.errors import SecureFedError
from securefed.logs import fatal

# A module that is not there yet is skipped, so the CLI works while it grows.
COMMAND_MODULES = (
    "securefed.demo_cli",
    "securefed.privacy.cli",
    "securefed.privacy.audit_cli",
    "securefed.transport.cli",
    "securefed.server.cli",
    "securefed.client.cli",
    "securefed.training.cli",
    "securefed.export.cli",
    "securefed.tasks.cli",
    "securefed.evaluation.cli",
    "securefed.simulation.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securefed",
        description=(
            "Privacy-preserving federated fine-tuning of LLMs: LoRA adapters trained with DP-SGD, "
            "combined by secure aggregation (pairwise masking or CKKS), with an auditable privacy ledger."
        ),
    )
    parser.add_argument("--version", action="version", version=f"securefed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # The command's module (or its package) is not built yet; any other missing import is a bug.
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except SecureFedError as exc:
        fatal(str(exc))  # one line; a JSON record at level "error" under --log-json
        return exc.exit_code
    except KeyboardInterrupt:
        print("securefed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `securefed status | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
