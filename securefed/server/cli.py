"""The operator's commands: ``securefed server``, ``securefed status`` and ``securefed ckks-init``.

``securefed.cli`` imports this module to build its parser, so it stays cheap to import: the
handlers import what is heavy (pydantic, numpy and the strategies through the config; grpc through
the app; the CKKS backend) when they run.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from securefed.errors import ConfigError
from securefed.fsutil import SHARED_MODE, atomic_write
from securefed.logs import setup_logging
from securefed.server.roundlog import RoundLog

if TYPE_CHECKING:
    from securefed.server.config import ServerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the federation coordinator (gRPC over mutual TLS)",
                       description="Run the coordinator: rounds of DP-trained LoRA updates combined by secure "
                                   "aggregation; crash-safe (resumes from the last completed round).")
    p.add_argument("--config", required=True, help="server.toml")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--port-file", help="write the bound port here once listening (useful with port 0)")
    p.set_defaults(handler=_server)

    s = sub.add_parser("status", help="show the coordinator's round log (works while it runs, or after)",
                       description="Read the server's SQLite round log: rounds, stages, clients, dropouts, timings.")
    s.add_argument("--config", required=True, help="server.toml")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--last", type=int, default=20, help="how many attempts to show (default 20)")
    s.set_defaults(handler=_status)

    k = sub.add_parser("ckks-init", help="create the federation's CKKS contexts (mode ckks)",
                       description="Write DIR/federation.secret.ctx (the shared secret key: give it to every member "
                                   "out of band, mode 0600) and DIR/federation.public.ctx (parameters only: the server's).")
    k.add_argument("--dir", required=True, help="output directory")
    k.add_argument("--params", default="ckks-n4096-q56-s40", help="CKKS parameter set (default ckks-n4096-q56-s40)")
    k.add_argument("--force", action="store_true", help="overwrite existing contexts")
    k.set_defaults(handler=_ckks_init)


def _load_config(path: str) -> ServerConfig:
    from securefed.server.config import load_server_config  # pydantic, numpy, the strategies

    return load_server_config(path)


def _server(args: argparse.Namespace) -> int:
    from securefed.server.app import ServerApp  # grpc, the whole coordinator

    setup_logging(json_lines=args.log_json, level=args.log_level)
    app = ServerApp(_load_config(args.config))
    port = app.start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    stop = threading.Event()

    def _sig(signum, frame):  # graceful on SIGTERM/SIGINT: the round log stays consistent either way
        stop.set()
        app.coordinator.stop()

    signal.signal(signal.SIGTERM, _sig)
    signal.signal(signal.SIGINT, _sig)
    try:
        ok = app.run()
        if not stop.is_set():
            app.coordinator.linger(15.0)
    finally:
        app.stop(grace=1.0)
    if stop.is_set():
        return 0  # stopped on request: the round log is consistent; a restart resumes
    return 0 if ok else 1


def _status(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    log = RoundLog(cfg.server.state_dir / "rounds.sqlite", readonly=True)
    try:
        attempts = log.attempts(limit=args.last)
        completed = log.completed_rounds()
        events = log.privacy_events()
        heads = log.ledger_heads()
        keys = log.identity_keys()
    finally:
        log.close()
    if args.json:
        print(json.dumps({"rounds_target": cfg.federation.rounds, "completed_rounds": completed,
                          "attempts": [a.to_json() for a in attempts],
                          "privacy_events": len(events),
                          "ledger_heads": {c: {"length": n, "entry_hash": h} for c, (n, h) in heads.items()},
                          "identity_keys": keys},
                         indent=1, default=str))
        return 0
    print(f"rounds completed: {completed}/{cfg.federation.rounds}   privacy events recorded: {len(events)}")
    print(f"{'attempt':>7} {'round':>5} {'status':<9} {'stage':<14} {'cohort':>6} {'in':>3} {'drop':>4} "
          f"{'decl':>4} {'seconds':>8}  detail")
    for a in attempts:
        secs = a.timings.get("total")
        if secs is None:
            secs = (a.finished_at or time.time()) - a.started_at
        detail = a.reason or (a.result_hash[:16] if a.result_hash else "")
        print(f"{a.attempt:>7} {a.round:>5} {a.status.value:<9} {a.stage:<14} {len(a.cohort):>6} {len(a.survivors):>3} "
              f"{len(a.dropouts):>4} {len(a.declined):>4} {secs:>8.2f}  {detail}")
        if a.timings:
            stages = ", ".join(f"{k}={v:.2f}s" for k, v in a.timings.items() if k != "total")
            print(f"{'':>7} stages: {stages}")
        if a.dropouts:
            print(f"{'':>7} dropouts: {', '.join(a.dropouts)}")
        for c, why in a.declined.items():
            print(f"{'':>7} declined: {c}: {why}")
    if heads:
        print("anchors for the auditor (securefed audit verify LEDGER... <these>): ledger heads reported here and")
        print("the certified identity keys the entries verified under")
        for c, (n, h) in sorted(heads.items()):
            print(f"  --expect-head {c}={n}:{h}")
        for c, k in sorted(keys.items()):
            print(f"  --public-key {c}={k}")
    sys.stdout.flush()
    return 0


def _ckks_init(args: argparse.Namespace) -> int:
    from securefed import he  # pydantic, and TenSEAL on first use

    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    secret, public = d / "federation.secret.ctx", d / "federation.public.ctx"
    if not args.force and (secret.exists() or public.exists()):
        raise ConfigError(f"{d} already holds CKKS contexts; replacing them locks every member out (pass --force)")
    ctx = he.generate_client_context(args.params)
    atomic_write(secret, ctx.serialize_secret(), mode=0o600)
    atomic_write(public, ctx.public_bytes(), mode=SHARED_MODE)
    print(f"secret context (members only, keep 0600): {secret}")
    print(f"public context (server.ckks_public_context): {public}")
    return 0
