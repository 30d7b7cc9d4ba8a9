"""The operator's commands: ``securefed server``, ``securefed status`` and ``securefed ckks-init``.

``securefed.cli`` imports this module to build its parser, so it stays cheap to import: the
handlers import what is heavy (pydantic, numpy and the strategies through the config; grpc through
the app; the CKKS backend) when they run.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from securefed import exit_codes
from securefed.errors import ConfigError
from securefed.fsutil import SHARED_MODE, atomic_write
from securefed.logs import route_native_stderr, setup_logging, watch_native

if TYPE_CHECKING:
    from securefed.server.config import ServerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the federation coordinator (gRPC over mutual TLS)",
                       description="Run the coordinator: rounds of DP-trained LoRA updates combined by secure "
                                   "aggregation; crash-safe (resumes from the last completed round).")
    p.add_argument("--config", required=True, help="server.toml")
    p.add_argument("--check", action="store_true",
                   help="validate offline and exit (0: ready, 2: something to fix): config, certificates and "
                        "their expiry, model directory, CKKS context, state; binds nothing")
    p.add_argument("--log-json", action="store_true",
                   help="one JSON object per log line on stderr (gRPC's and other libraries' own lines included)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--port-file", help="write the bound port here once listening (useful with port 0)")
    p.set_defaults(handler=_server)

    s = sub.add_parser("status", help="show the federation: server alive?, the stage now, members, alerts, attempts",
                       description="Read the server's state directory (round log, live status, security alerts): "
                                   "whether the server runs, the attempt and stage open now with bytes moved, each "
                                   "member's last sign of life, activity and epsilon spent, security alerts, the "
                                   "last attempts, and the auditor's anchors. Works while it runs, or after.")
    s.add_argument("--config", required=True, help="server.toml")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--last", type=int, default=20, help="how many attempts to show (default 20)")
    s.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
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
    if args.check:
        from securefed.server.preflight import check_server  # grpc, tenseal, the whole coordinator

        setup_logging(json_lines=False, level="warning")
        return check_server(args.config).report("server")
    setup_logging(json_lines=args.log_json, level=args.log_level)
    # Before grpc starts: its core logs to file descriptor 2. Routed in text mode too (dated lines).
    route_native_stderr(keep_python_stderr=not args.log_json)
    from securefed.server.app import ServerApp, check_credentials  # grpc, the whole coordinator
    from securefed.server.handshakes import HandshakeWatch
    from securefed.server.livestatus import StartingBeacon

    cfg = _load_config(args.config)
    watch_native(HandshakeWatch(cfg.server.state_dir))  # a member of another CA: an alert, not only gRPC's line
    with StartingBeacon(cfg.server.state_dir):  # `securefed status`: starting, not "not running"
        # Certificates first: an expired one is one line at once, before minutes of reading the model.
        app = ServerApp(cfg, credentials=check_credentials(cfg))
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
        return exit_codes.FINISHED  # stopped on request: the round log is consistent; a restart resumes
    # Every member out of budget is a clean ending (the final adapter is valid), not a failure to retry;
    # neither is a federation that spent its max_attempts (its signed end told the members why).
    ending = app.coordinator.ending
    if ok or ending == "budget_exhausted":
        return exit_codes.FINISHED
    return exit_codes.GAVE_UP if ending == "gave_up" else exit_codes.FAULT


def _status(args: argparse.Namespace) -> int:
    from securefed.server.status_view import show  # the accountants, to show epsilon per member

    cfg = _load_config(args.config)
    return show(cfg.server.state_dir, cfg.federation.rounds, last=args.last, as_json=args.json, watch=args.watch)


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
