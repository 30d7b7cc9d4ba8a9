"""``securefed simulate`` as a user runs it: JSON on stdout, and one line with exit 2 for each bad argument."""

from __future__ import annotations

import json
import re
import socket

import pytest

from securefed.cli import main


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_prints_one_array_of_round_records(capsys, sim_model):
    code, out, err = simulate(capsys, "--members", "4", "--rounds", "1", "--epsilon", "8", "none", "--model",
                              str(sim_model), "--json", "--eval-examples", "8", "--steps", "2")
    assert code == 0
    records = json.loads(out)  # nothing but the array on stdout
    assert [(r["epsilon"], r["round"]) for r in records] == [(8.0, 0), (8.0, 1), (None, 0), (None, 1)]
    assert records[1]["summed"] == 4 and 0 < records[1]["epsilon_spent_max"] <= 8
    assert records[3]["epsilon_spent_max"] is None and records[3]["noise"] == "csprng"
    assert "round 1: cohort 4/4" in err  # the human lines go to stderr with --json


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--members", "2"], "secure aggregation needs at least 3 members per round"),
    (["--members", "4", "--epsilon", "0.01"], "--epsilon 0.01: .*unreachable"),
    (["--members", "2000"], "fewer than the 8 a member needs"),
    (["--members", "4", "--address", "127.0.0.1:1"], "--address names a Ray cluster: add --engine ray"),
    (["--members", "4", "--cohort-fraction", "1.5"], "--cohort_fraction: Input should be less than or equal to 1"),
    (["--members", "4", "--engine", "ray", "--address", "127.0.0.1:{port}", "--connect-timeout", "2"],
     "Ray at 127.0.0.1:[0-9]+ does not answer"),
    (["--data", "{missing}"], "no such file or directory"),
])
def test_bad_arguments_get_one_line_and_exit_2(capsys, sim_model, tmp_path, args, message):
    args = [a.format(port=_closed_port(), missing=tmp_path / "nope.jsonl") for a in args]
    epsilon = [] if "--epsilon" in args else ["--epsilon", "3"]
    code, out, err = simulate(capsys, "--rounds", "1", *epsilon, "--model", str(sim_model), *args)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("securefed: error:")]
    # One line, and it is the last: no traceback of ours (another test's logging handler may complain
    # about its own closed stream in this process; that is not this command's output).
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0] and "securefed.errors" not in err
    assert re.search(message, lines[0]), lines[0]
