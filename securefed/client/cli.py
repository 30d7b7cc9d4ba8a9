"""``securefed client --config client.toml``: the member's daemon."""

from __future__ import annotations

import argparse
import signal
import threading

from securefed.logs import setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run a member's client daemon",
                       description="Join the federation: pull round plans, enforce this member's privacy budget, "
                                   "train LoRA with DP-SGD, send only masked/encrypted updates.")
    p.add_argument("--config", required=True, help="client.toml")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_client)


def _client(args: argparse.Namespace) -> int:
    # Deferred so that `securefed --help` stays fast: the daemon pulls in torch, grpc and opacus.
    from securefed.client.config import load_client_config
    from securefed.client.daemon import ClientDaemon

    setup_logging(json_lines=args.log_json, level=args.log_level)
    cfg = load_client_config(args.config)

    stop = threading.Event()
    daemon = ClientDaemon(cfg, stop=stop)

    def _sig(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _sig)
    signal.signal(signal.SIGINT, _sig)
    try:
        return daemon.run()
    finally:
        daemon.close()
