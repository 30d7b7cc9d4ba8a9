"""What importing the coordinator pulls in: the CLI module stays cheap, and nothing of the member."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("grpc", "torch", "tenseal", "opacus", "transformers", "peft", "pydantic", "numpy")


def _modules_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_the_server_cli_module_imports_nothing_heavy_so_securefed_help_stays_fast():
    loaded = _modules_after("import securefed.server.cli")
    assert [m for m in HEAVY if m in loaded] == []


def test_the_coordinator_never_imports_the_member_daemon():
    loaded = _modules_after("import securefed.server.app")
    assert "securefed.server.coordinator" in loaded and "securefed.server.mailbox" in loaded
    assert [m for m in loaded if m == "securefed.client" or m.startswith("securefed.client.")] == []
