"""The member's global-adapter keep when the disk is full, and its heartbeat thread."""

from __future__ import annotations

import errno
import logging
import threading
import time

import numpy as np
import pytest

from securefed import fsutil
from securefed.client.global_store import GlobalStore, keep_or_log
from securefed.client.heartbeat import Heartbeat
from securefed.errors import StateError, TransportError
from securefed.protocol.bundle import decode_bundle, encode_bundle, read_adapter_file
from securefed.transport._generated import federation_pb2 as pb


def _bundle(value: float):
    data, _ = encode_bundle(np.full(4, value, np.float32), '{"tensors":[],"version":1}', "{}", None, None)
    return decode_bundle(data)


def _disk_full(monkeypatch):
    """The disk refuses the data: fsync reports ENOSPC (as ext4 does for delayed allocation)."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", fsync)


def test_a_full_disk_is_one_line_naming_the_path_and_the_previous_adapter_stays(tmp_path, monkeypatch):
    store = GlobalStore(tmp_path)
    store.keep(_bundle(1.0), 1)
    before = store.adapter_path.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(StateError) as exc:
        store.keep(_bundle(2.0), 2)
    msg = str(exc.value)
    assert "\n" not in msg and str(store.adapter_path) in msg and "errno 28" in msg and "round 2" in msg
    monkeypatch.undo()
    # On disk: the previous adapter, whole; no torn temporary file left behind; in memory: the new one.
    assert store.adapter_path.read_bytes() == before and read_adapter_file(store.adapter_path).meta["round"] == "1"
    assert [p.name for p in store.dir.iterdir()] == ["adapter.safetensors"]
    assert store.latest_round() == 2 and float(store.latest.vector[0]) == 2.0
    assert GlobalStore(tmp_path).latest_round() == 1  # after a restart: what the disk holds


def test_the_daemon_logs_a_refused_write_as_one_error_and_goes_on(tmp_path, monkeypatch):
    store = GlobalStore(tmp_path)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    h = Keep()
    logging.getLogger("securefed.client").addHandler(h)
    try:
        _disk_full(monkeypatch)
        keep_or_log(store.keep, _bundle(3.0), 3)  # does not raise: the daemon goes on
        keep_or_log(store.save_client_state, np.zeros(4, np.float32))
    finally:
        logging.getLogger("securefed.client").removeHandler(h)
    errors = [r for r in seen if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("disk write failed" in r.getMessage() for r in errors)
    assert not store.adapter_path.exists() and store.latest_round() == 3


class _Link:
    """Stands in for the network end of ``Connection`` (header and one unary call)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[pb.MemberHeartbeat] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def header(self, attempt=0, stage=0, session=b"", sequenced=True):
        return pb.RequestHeader(client_id="m", round=attempt, stage=stage)

    def call(self, method, request, *, timeout=None):
        assert method == "SendHeartbeat" and timeout is not None
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise TransportError("server unreachable")
            self.sent.append(request)
        return pb.HeartbeatAck(heartbeat_interval_ms=50)


def test_heartbeats_carry_progress_only_while_working_and_survive_a_lost_link():
    link = _Link(fail_first=2)
    working = {"attempt": 0}
    hb = Heartbeat(link, lambda: working["attempt"], interval_s=0.05, target_epsilon=8.0)
    hb.start()
    try:
        time.sleep(0.3)
        assert link.sent == []  # not working on an attempt: nothing to say (its polls show it is alive)
        working["attempt"] = 7
        hb.training_step(3, 10)
        deadline = time.monotonic() + 5
        while len(link.sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(link.sent) >= 3  # the two failed beats were dropped, the thread went on
        last = link.sent[-1]
        assert (last.header.round, last.activity, last.step, last.total_steps) == (7, pb.MEMBER_ACTIVITY_TRAINING, 3, 10)
        assert last.target_epsilon == 8.0
        working["attempt"] = 0
        time.sleep(0.2)
        n = len(link.sent)
        time.sleep(0.3)
        assert len(link.sent) == n  # idle, in its polls: silent
        with hb.busy():  # handling a task outside any attempt (a long download): it beats, for attempt 0
            deadline = time.monotonic() + 5
            while len(link.sent) == n and time.monotonic() < deadline:
                time.sleep(0.02)
        assert len(link.sent) > n and link.sent[-1].header.round == 0
    finally:
        hb.close()
