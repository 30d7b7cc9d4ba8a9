"""A loopback TCP relay that stands between members and the real gRPC server: it moves the TLS bytes
unchanged, counts them each way, and cuts connections in the middle of large transfers.

Imported as a plain module by the transfer tests and by bench/transfer.py (tests/ has no packages).

A cut is triggered by a *burst*: bytes relayed in one direction on one connection without a pause of
``gap_s``. Polls, plans and stage messages are a few kB each, so only a bulk transfer (an upload,
an adapter or ciphertext download) makes a burst of ``cut_bytes``: cutting there drops the
connection mid-transfer, never during a unary call. Both sockets are closed with SO_LINGER 0, so
each side sees its connection reset, as when a link drops and a NAT forgets the flow.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

UP, DOWN = "up", "down"  # member -> server, server -> member


@dataclass
class CutPlan:
    """Cut a connection once a burst in ``direction`` reaches ``cut_bytes``, at most ``times`` times."""

    direction: str
    cut_bytes: int
    times: int
    done: int = 0
    at: list[int] = field(default_factory=list)  # the direction's total relayed bytes at each cut


class CuttingRelay:
    """``with CuttingRelay(server_port) as relay:`` members dial ``relay.address``."""

    def __init__(self, target_port: int, *, gap_s: float = 0.25, bufsize: int = 64 * 1024) -> None:
        self.target = ("127.0.0.1", target_port)
        self.gap_s = gap_s
        self.bufsize = bufsize
        self.bytes = {UP: 0, DOWN: 0}
        self.connections = 0
        self.plans: list[CutPlan] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self, direction: str, cut_bytes: int, times: int) -> CutPlan:
        plan = CutPlan(direction, cut_bytes, times)
        with self._lock:
            self.plans.append(plan)
        return plan

    @property
    def cuts(self) -> int:
        return sum(p.done for p in self.plans)

    def __enter__(self) -> "CuttingRelay":
        t = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        with self._lock:
            socks = list(self._open)
        for s in socks:
            _reset(s)
        self._listener.close()
        for t in self._threads:
            t.join(2.0)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                member, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _reset(member)
                continue
            with self._lock:
                self.connections += 1
                self._open |= {member, server}
            pair = _Pair(member, server)
            for src, dst, direction in ((member, server, UP), (server, member, DOWN)):
                t = threading.Thread(target=self._pump, args=(pair, src, dst, direction), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, pair: "_Pair", src: socket.socket, dst: socket.socket, direction: str) -> None:
        burst, last = 0, time.monotonic()
        try:
            while True:
                data = src.recv(self.bufsize)
                if not data:
                    break
                now = time.monotonic()
                burst = burst + len(data) if now - last < self.gap_s else len(data)
                last = now
                dst.sendall(data)
                with self._lock:
                    self.bytes[direction] += len(data)
                    plan = next((p for p in self.plans if p.direction == direction and p.done < p.times
                                 and burst >= p.cut_bytes), None)
                    if plan is not None:
                        plan.done += 1
                        plan.at.append(self.bytes[direction])
                if plan is not None:
                    break
        except OSError:
            pass
        pair.close(self)


class _Pair:
    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.socks = (a, b)
        self._closed = False
        self._lock = threading.Lock()

    def close(self, relay: CuttingRelay) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for s in self.socks:
            _reset(s)
        with relay._lock:
            relay._open -= set(self.socks)


def _reset(s: socket.socket) -> None:
    """Wake the thread reading it (SHUT_RD), then close with RST (SO_LINGER 0)."""
    for step in (lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: s.shutdown(socket.SHUT_RD), s.close):
        try:
            step()
        except OSError:
            pass
