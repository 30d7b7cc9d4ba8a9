"""One federated round at LLM adapter sizes through the real daemons: time, bytes and memory (JSON on stdout).

For each cohort size (default 3 and 10) and adapter size (default ~1M, 4M and 20M LoRA parameters),
in the same run: a plaintext round (the baseline), a secagg round and a ckks round. Everything is
the real thing: ``securefed server`` and one ``securefed client`` process per member (the CLI an
operator runs), gRPC over mutual TLS on 127.0.0.1, DP-SGD (Opacus) in every mode, the members' own
budget checks and ledgers. Only the aggregation mode differs between the three runs, so
``round_s / plaintext_round_s`` is what secure aggregation costs over plaintext aggregation (DP-SGD's
own cost is ``bench/training.py``'s subject).

The model is a Llama-architecture checkpoint built from a config with random weights (hidden 256,
4 or 16 layers) and ``save_pretrained``; LoRA on all seven linear modules, the rank chosen for the
adapter size; one local step of batch 4, sequence 16, so local training stays small next to the
aggregation being measured. The threshold is the smallest safe against one colluding member (3 of 3,
6 of 10), as ``federation.provision`` picks it. Each run has two rounds; the second is measured (the first pays the
one-time costs: model load, noise calibration).

Fields of each record: ``mode``, ``members``, ``adapter_params``, ``payload_params`` (adapter + the
strategy's weight), ``round_s`` (the coordinator's own timing of the measured round, plan to new global
adapter), ``plaintext_round_s``, ``round_over_plaintext`` (target <= 1.3), ``member_bytes_in`` /
``member_bytes_out`` (protobuf payload bytes a member received / sent in the measured round, from the
server's round log: the round's own messages plus its download of the previous round's adapter;
TLS and HTTP/2 framing not included), ``plaintext_member_bytes`` (in + out of the plaintext round),
``member_bytes_over_plaintext`` (targets: ckks <= 3, secagg <= 1.1 at 10 members),
``server_peak_rss_mb`` and ``member_peak_rss_mb`` (maximum resident set of the server process and of
the largest member process over the whole run, from ``wait4``), ``cores``, ``ok``.

    python bench/round.py --json                       # full grid: 3 and 10 members x ~1M, 4M, 20M
    python bench/round.py --json --quick               # 3 members, ~1M only
    python bench/round.py --json --members 3 --sizes 4M
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import securefed.federation as fed  # noqa: E402
from securefed.server.roundlog import RoundLog  # noqa: E402
from securefed.training.preset import PRESET_MARKER  # noqa: E402

HIDDEN, INTERMEDIATE = 256, 688
# LoRA parameters per layer and rank on all seven linear modules: r * sum(in + out).
PER_LAYER_RANK = 4 * (HIDDEN + HIDDEN) + 3 * (HIDDEN + INTERMEDIATE)
SIZES = {"1M": (4, 51), "4M": (4, 205), "20M": (16, 256)}  # (layers, rank)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("plaintext", "secagg", "ckks")


def build_model(directory: Path, layers: int) -> Path:
    """A random-weight Llama checkpoint, saved as any local HF checkpoint is (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from securefed.training.preset import train_tokenizer

    if (directory / PRESET_MARKER).exists():
        return directory
    tok = train_tokenizer(512)
    torch.manual_seed(0)  # not secret: benchmark weights
    cfg = LlamaConfig(vocab_size=512, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    # federation.provision builds its tiny preset into a model directory without this marker.
    (directory / PRESET_MARKER).write_text(json.dumps({"size": f"bench-{layers}-layers", "pretrained": False}))
    return directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "securefed.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[int | None, float]:
    """(exit code, peak RSS in MiB) of a child, from wait4; kills it after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024.0
        if time.monotonic() > end:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return None, usage.ru_maxrss / 1024.0
        time.sleep(0.2)


def run_case(work: Path, model_dir: Path, mode: str, n: int, rank: int, rounds: int, timeout_s: float) -> dict:
    port = _free_port()
    p = fed.provision(
        work, n, mode=mode, rounds=rounds, model_dir=model_dir, address=f"127.0.0.1:{port}",
        target_epsilon=1e4,
        server={"lora": {"rank": rank, "alpha": float(2 * rank), "target_modules": TARGETS},
                "deadlines": {"join_s": 600.0, "training_s": 1800.0, "share_keys_s": 600.0, "masked_input_s": 1800.0,
                              "unmask_s": 1800.0, "decrypt_s": 1800.0, "poll_s": 2.0}},
        client={"training": {"steps": 1, "batch_size": 4, "max_seq_len": 16, "learning_rate": 0.05, "clipping": "hooks"},
                "connection": {"poll_wait_s": 2.0, "backoff_initial_s": 0.2, "backoff_max_s": 2.0,
                               "give_up_after_s": 1800.0}},
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = _spawn(["server", "--config", str(p.server_toml), "--log-json"], logs / "server.log", env)
    members = {}
    try:
        time.sleep(1.0)
        for name, toml in p.client_tomls.items():
            fed.set_client_server(toml, f"127.0.0.1:{port}")
            members[name] = _spawn(["client", "--config", str(toml), "--log-json"], logs / f"{name}.log", env)
        server_rc, server_rss = _wait(server, timeout_s)
        member = [_wait(pr, 120.0) for pr in members.values()]
    finally:
        for pr in [server, *members.values()]:
            if pr.returncode is None and pr.poll() is None:
                pr.kill()
    if not (p.root / "server-state" / "rounds.sqlite").exists():  # the server refused to start: say why
        last_line = (logs / "server.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"{mode} server exited {server_rc} before its first round: {last_line[0][:500]}")
    log = RoundLog(p.root / "server-state" / "rounds.sqlite", readonly=True)
    attempts = log.attempts()
    log.close()
    done = [a for a in attempts if a.status.value == "completed"]
    last = done[-1] if done else None
    return {
        "ok": server_rc == 0 and len(done) == rounds and all(rc == 0 for rc, _ in member),
        "rounds_completed": len(done), "failed_attempts": len(attempts) - len(done),
        "round_s": round(last.timings.get("total", float("nan")), 3) if last else None,
        "stage_s": {k: round(v, 3) for k, v in last.timings.items()} if last else {},
        "member_bytes_in": round(last.bytes_out / n) if last else None,  # what the server sent is what members got
        "member_bytes_out": round(last.bytes_in / n) if last else None,
        "server_peak_rss_mb": round(server_rss, 1),
        "member_peak_rss_mb": round(max((rss for _, rss in member), default=0.0), 1),
        "logs": str(logs),
    }


def adapter_params(layers: int, rank: int) -> int:
    return layers * rank * PER_LAYER_RANK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run; the last is measured")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    ap.add_argument("--keep", type=Path, default=None, help="keep work directories (logs) under this path")
    ap.add_argument("--json", action="store_true", help="one JSON array on stdout")
    ap.add_argument("--jsonl", type=Path, default=None, help="also append each record to this file as it is measured")
    ap.add_argument("--quick", action="store_true", help="3 members, ~1M parameters")
    args = ap.parse_args(argv)
    if args.quick:
        args.members, args.sizes = [3], ["1M"]
    if "plaintext" not in args.modes:
        args.modes = ["plaintext", *args.modes]
    cores = len(os.sched_getaffinity(0))
    records = []
    with tempfile.TemporaryDirectory(prefix="securefed-round-") as tmp:
        base = args.keep or Path(tmp)
        for size in args.sizes:
            layers, rank = SIZES[size]
            model_dir = build_model(base / f"model-{layers}", layers)
            for n in args.members:
                res = {}
                for mode in args.modes:
                    t0 = time.perf_counter()
                    res[mode] = run_case(base / f"{size}-{n}-{mode}", model_dir, mode, n, rank, args.rounds, args.timeout)
                    print(f"# {size} {n} members {mode}: round {res[mode]['round_s']} s, in/out "
                          f"{res[mode]['member_bytes_in']}/{res[mode]['member_bytes_out']} B, ok {res[mode]['ok']} "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                plain = res["plaintext"]
                plain_bytes = (plain["member_bytes_in"] or 0) + (plain["member_bytes_out"] or 0)
                for mode, r in res.items():
                    bytes_ = (r["member_bytes_in"] or 0) + (r["member_bytes_out"] or 0)
                    records.append({
                        "name": "round", "mode": mode, "members": n, "adapter_params": adapter_params(layers, rank),
                        "payload_params": adapter_params(layers, rank) + 1, "lora_rank": rank, "layers": layers,
                        "round_s": r["round_s"], "plaintext_round_s": plain["round_s"],
                        "round_over_plaintext": round(r["round_s"] / plain["round_s"], 3)
                        if r["round_s"] and plain["round_s"] else None,
                        "member_bytes_in": r["member_bytes_in"], "member_bytes_out": r["member_bytes_out"],
                        "plaintext_member_bytes": plain_bytes,
                        "member_bytes_over_plaintext": round(bytes_ / plain_bytes, 3) if plain_bytes else None,
                        "server_peak_rss_mb": r["server_peak_rss_mb"], "member_peak_rss_mb": r["member_peak_rss_mb"],
                        "stage_s": r["stage_s"], "rounds_completed": r["rounds_completed"],
                        "failed_attempts": r["failed_attempts"], "ok": r["ok"], "cores": cores,
                        "machine": f"{platform.machine()} {os.cpu_count()} cpus, shared",
                        "transport": "gRPC over mutual TLS 1.3, 127.0.0.1; one process per member and for the server",
                    })
                    if args.jsonl:
                        with open(args.jsonl, "a") as f:
                            f.write(json.dumps(records[-1]) + "\n")
    print(json.dumps(records, indent=None if args.json else 1))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
