"""``securefed client --config client.toml``: the member's daemon (``--check``: validate it offline)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from securefed.logs import get_logger, log, route_native_stderr, setup_logging

if TYPE_CHECKING:
    from securefed.client.config import ClientConfig

LOCAL_SHARE = 4  # a one-machine trial: the server and (at least) three members share the cores


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run a member's client daemon",
                       description="Join the federation: pull round plans, enforce this member's privacy budget, "
                                   "train LoRA with DP-SGD, send only masked/encrypted updates. A configuration "
                                   "that can never train (delta >= 1/N, a budget no noise level fits) exits 2 "
                                   "at start-up.")
    p.add_argument("--config", required=True, help="client.toml")
    p.add_argument("--check", action="store_true",
                   help="validate offline and exit (0: ready, 2: something to fix): config, certificates and "
                        "their expiry, ledger, model directory, data, budget feasibility; dials nothing")
    p.add_argument("--log-json", action="store_true",
                   help="one JSON object per log line on stderr (gRPC's and other libraries' own lines included)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_client)


def _client(args: argparse.Namespace) -> int:
    # Deferred so that `securefed --help` stays fast: the daemon pulls in torch, grpc and opacus.
    if args.check:
        from securefed.client.preflight import check_client

        setup_logging(json_lines=False, level="warning")
        return check_client(args.config).report("client")
    from securefed.client.config import load_client_config

    setup_logging(json_lines=args.log_json, level=args.log_level)
    # Before grpc starts: its core logs to file descriptor 2. Routed in text mode too (dated lines).
    route_native_stderr(keep_python_stderr=not args.log_json)
    cfg = load_client_config(args.config)  # a bad config is one line before torch and grpc even load
    threads = choose_torch_threads(cfg, _cores(), os.environ)
    if threads is not None:
        import torch  # the daemon's first heavy import: its thread pool is sized before it is used

        torch.set_num_threads(threads)
        log(get_logger("client"), "torch threads", threads=threads, cores=_cores())
    from securefed.client.daemon import ClientDaemon

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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _server_is_local(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_torch_threads(config: ClientConfig, cores: int, environ: Mapping[str, str]) -> int | None:
    """Threads for local training, or None to leave torch's own choice (OMP_NUM_THREADS, all cores).

    A member whose server is on this machine is a one-machine trial: unthrottled, every process would
    run a thread per core and they would slow each other down several times over."""
    if config.client.torch_threads is not None:
        return config.client.torch_threads
    if environ.get("OMP_NUM_THREADS"):
        return None
    if _server_is_local(config.client.server):
        return max(1, cores // LOCAL_SHARE)
    return None
