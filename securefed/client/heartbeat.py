"""Liveness while this member works on an attempt: a thread that sends ``SendHeartbeat`` every interval.

Between two polls the pull loop may be busy for a long time (the global adapter download, training,
masking, uploading); without heartbeats the server would learn that a member died only at the
stage deadline. While the daemon works on an attempt, or handles any task (a long download of the
previous round's adapter, say), this thread sends the attempt (0: none in particular), what the
member is doing and its training progress (step i of n) every ``interval_s`` seconds, so the server
can drop a dead member after a few missed heartbeats. A heartbeat that fails is dropped (the next
one is the retry) and nothing here ever raises into the round, but one: when the server answers that the
attempt is over (aborted, or it went on without this member), the next training step raises
``AttemptEnded``, so the member stops at once instead of training for an attempt nobody waits for.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from securefed.client.connection import Connection
from securefed.errors import AttemptEnded, SecureFedError
from securefed.transport._generated import federation_pb2 as pb

ACTIVITY_NAMES = {pb.MEMBER_ACTIVITY_PREPARING: "preparing", pb.MEMBER_ACTIVITY_TRAINING: "training",
                  pb.MEMBER_ACTIVITY_PROTECTING: "protecting", pb.MEMBER_ACTIVITY_WAITING: "waiting"}


class Heartbeat:
    """``Heartbeat(connection, attempt_fn, interval_s=5)``; ``start()`` once, ``close()`` at exit.

    ``attempt_fn`` names the attempt the member works on now (0: none; then beats are sent only while
    ``busy()``)."""

    def __init__(self, connection: Connection, attempt_fn: Callable[[], int], *, interval_s: float,
                 target_epsilon: float = 0.0) -> None:
        self.connection = connection
        self._attempt_fn = attempt_fn
        self.interval_s = interval_s
        self.target_epsilon = target_epsilon
        self.epsilon_spent = 0.0
        self.activity = pb.MEMBER_ACTIVITY_PREPARING
        self.step = self.total_steps = 0
        self.sent = 0
        self.ended_attempt = 0  # the server said this attempt is over (HeartbeatAck.attempt_over)
        self._busy = 0
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def set_interval(self, interval_s: float) -> None:
        """The interval the server asked for at registration (0 or less: keep the member's own)."""
        if interval_s > 0 and interval_s != self.interval_s:
            self.interval_s = interval_s
            self._wake.set()

    # --- what the daemon is doing -------------------------------------------------------------------
    def doing(self, activity: int, step: int = 0, total_steps: int = 0) -> None:
        self.activity, self.step, self.total_steps = activity, step, total_steps

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """While the daemon handles a task (not waiting in a poll), it beats even outside an attempt."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    def poke(self) -> None:
        """Send one now (the member just took up an attempt: the server learns at once what it does)."""
        self._wake.set()

    def preparing(self, epsilon_spent: float) -> None:
        """A plan arrived: say so at once, with the budget spent so far."""
        self.epsilon_spent = epsilon_spent
        self.doing(pb.MEMBER_ACTIVITY_PREPARING)
        self.poke()

    def training_step(self, step: int, total_steps: int) -> None:
        attempt = self._attempt_fn()
        if attempt and attempt == self.ended_attempt:
            raise AttemptEnded(f"the server ended attempt {attempt}: stopped training it after step {step} of "
                               f"{total_steps}; nothing of it is released")
        self.doing(pb.MEMBER_ACTIVITY_TRAINING, step, total_steps)

    # --- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._closed.is_set():
                return
            attempt = self._attempt_fn()
            if attempt or self._busy:
                self._send(attempt)

    def _send(self, attempt: int) -> None:
        req = pb.MemberHeartbeat(
            header=self.connection.header(attempt, pb.STAGE_STATUS, sequenced=False), activity=self.activity,
            step=self.step, total_steps=self.total_steps, epsilon_spent=self.epsilon_spent,
            target_epsilon=self.target_epsilon)
        try:
            ack = self.connection.call("SendHeartbeat", req, timeout=max(1.0, self.interval_s))
        except SecureFedError:
            return  # lost link, server restarting: the pull loop deals with it; the next beat retries
        except Exception:  # noqa: BLE001 - a heartbeat must never take the daemon down (e.g. a channel being reopened)
            return
        self.sent += 1
        if ack.attempt_over and attempt:
            self.ended_attempt = attempt
        self.set_interval(ack.heartbeat_interval_ms / 1000.0)
