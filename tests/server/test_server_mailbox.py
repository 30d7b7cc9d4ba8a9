"""The coordinator's mailbox on its own: registry, what each member is handed next, header checks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from securefed.config import parse_model
from securefed.errors import InvalidMessage, NotRegistered, ReplayedMessage, StaleMessage
from securefed.server.attempt import AttemptContext, Phase, RoundOutcome
from securefed.server.checkpoint import Checkpoint
from securefed.server.config import ServerConfig
from securefed.server.driver import RoundDriver
from securefed.server.mailbox import Mailbox
from securefed.transport._generated import federation_pb2 as pb

POLL_S = 2.0


class _Driver(RoundDriver):
    """Takes plaintext uploads in the plan stage; records what it was handed."""

    def __init__(self, ctx: AttemptContext) -> None:
        super().__init__(ctx)
        self.uploads: dict[str, bytes] = {}

    def first_phase(self) -> Phase:
        return self.plan_phase()

    def check_upload(self, phase: Phase, client: str, kind: int, stage: int, ring_bits: int, part_sizes) -> None:
        self.expect_ring_vector(kind, ring_bits, 64, part_sizes)

    def on_masked_upload(self, phase: Phase, client: str, stage: int, ring_bits: int, data: bytes) -> None:
        self.uploads[client] = data
        phase.responded.add(client)

    def finish_phase(self, phase: Phase) -> Phase | RoundOutcome:  # pragma: no cover - the loop's business
        raise AssertionError("not called here")


def _config(tmp_path: Path) -> ServerConfig:
    return parse_model(ServerConfig, {
        "server": {"credentials_dir": str(tmp_path / "pki"), "state_dir": str(tmp_path / "state"),
                   "base_model_dir": str(tmp_path / "m")},
        "federation": {"mode": "plaintext", "allow_plaintext_for_debugging": True},
        "deadlines": {"poll_s": POLL_S},
    })


def _ckpt(tmp_path: Path, round: int = 0) -> Checkpoint:
    path = tmp_path / f"global-r{round}.bin"
    path.write_bytes(b"global adapter %d" % round)
    return Checkpoint(round, np.zeros(3, np.float32), "{}", "", None, "00" * 32, path)


def _attempt(tmp_path: Path, attempt: int, cohort=("a", "b")) -> tuple[AttemptContext, _Driver, Phase]:
    plan = pb.RoundPlan(round=attempt, plan_sha256=bytes([attempt]) * 32)
    ctx = AttemptContext(attempt=attempt, round=1, config=_config(tmp_path), cohort=tuple(cohort),
                         identity_keys={c: b"k" * 32 for c in cohort}, global_ckpt=_ckpt(tmp_path), payload_length=3,
                         plan=plan)
    driver = _Driver(ctx)
    return ctx, driver, driver.first_phase()


def _mailbox(describe=lambda: "waiting for clients") -> tuple[Mailbox, threading.Event]:
    stop = threading.Event()
    return Mailbox(threading.Condition(), stop, poll_s=POLL_S, describe=describe), stop


def _hdr(attempt: int, seq: int, stage: int = pb.STAGE_PLAN) -> pb.RequestHeader:
    return pb.RequestHeader(round=attempt, stage=stage, sequence=seq)


def test_an_unknown_member_is_told_to_register_with_its_own_error_type():
    mb, _ = _mailbox()
    with pytest.raises(NotRegistered):
        mb.poll("ghost", 0.0)
    mb.register("ghost", b"k" * 32)
    assert mb.poll("ghost", 0.0).WhichOneof("body") == "wait"
    assert mb.connected() == ["ghost"]


def test_the_outcome_of_the_previous_attempt_comes_before_the_next_plan(tmp_path):
    mb, _ = _mailbox()
    for c in "ab":
        mb.register(c, b"k" * 32)
    ctx1, d1, ph1 = _attempt(tmp_path, 1)
    mb.open(ctx1, d1, ph1)
    assert mb.poll("a", 0.0).plan.round == 1
    mb.close(ctx1, aborted=pb.RoundAborted(reason="only 1 clients uploaded"))
    ctx2, d2, ph2 = _attempt(tmp_path, 2)
    mb.open(ctx2, d2, ph2)
    first, second = mb.poll("a", 0.0), mb.poll("a", 0.0)
    assert first.WhichOneof("body") == "aborted" and first.round == 1 and first.stage == pb.STAGE_AGGREGATE
    assert second.WhichOneof("body") == "plan" and second.plan.round == 2
    # "b" never polled during attempt 1: it still gets that outcome first, once.
    assert mb.poll("b", 0.0).aborted.reason == "only 1 clients uploaded"
    assert mb.poll("b", 0.0).plan.round == 2


def test_sequence_numbers_must_rise_within_an_attempt_and_start_over_in_the_next(tmp_path):
    mb, _ = _mailbox()
    ctx1, d1, ph1 = _attempt(tmp_path, 1)
    mb.open(ctx1, d1, ph1)
    assert mb.check_header("a", _hdr(1, 1)) is ctx1
    for seq in (1, 0):
        with pytest.raises(ReplayedMessage, match="sequence"):
            mb.check_header("a", _hdr(1, seq))
    mb.check_header("a", _hdr(1, 5))
    mb.check_header("b", _hdr(1, 1))  # sequences are per member
    with pytest.raises(ReplayedMessage):
        mb.check_header("a", _hdr(1, 4))
    mb.check_header("a", _hdr(1, 4), sequence_required=False)  # privacy events are checked elsewhere
    mb.close(ctx1, aborted=pb.RoundAborted(reason="x"))
    ctx2, d2, ph2 = _attempt(tmp_path, 2)
    mb.open(ctx2, d2, ph2)
    assert mb.check_header("a", _hdr(2, 1)) is ctx2


def test_messages_for_no_open_attempt_or_another_attempt_are_stale_and_strangers_are_refused(tmp_path):
    mb, _ = _mailbox()
    with pytest.raises(StaleMessage, match="no round"):
        mb.check_header("a", _hdr(1, 1))
    upload = (pb.TRANSFER_KIND_RING_VECTOR, 64, (3 * 8,))
    with pytest.raises(StaleMessage, match="no round"):
        mb.admit_upload("a", _hdr(7, 1), *upload, then=lambda: "admitted")
    ctx, d, ph = _attempt(tmp_path, 7)
    mb.open(ctx, d, ph)
    assert mb.admit_upload("a", _hdr(7, 1), *upload, then=lambda: "admitted") == "admitted"
    with pytest.raises(InvalidMessage, match="expects one of 24"):
        mb.admit_upload("a", _hdr(7, 2), pb.TRANSFER_KIND_RING_VECTOR, 64, (25,), then=lambda: "admitted")
    with pytest.raises(StaleMessage, match="for attempt 6, the current attempt is 7"):
        mb.check_header("a", _hdr(6, 1))
    with pytest.raises(InvalidMessage, match="cohort") as exc:
        mb.check_header("mallory", _hdr(7, 1))
    assert not isinstance(exc.value, StaleMessage)
    mb.show(None)  # applying: nothing is collected any more
    with pytest.raises(StaleMessage):
        mb.check_header("a", _hdr(7, 2))


def test_a_member_that_answered_is_not_handed_the_task_again_and_cannot_answer_twice(tmp_path):
    mb, _ = _mailbox()
    mb.register("a", b"k" * 32)
    ctx, d, ph = _attempt(tmp_path, 1)
    mb.open(ctx, d, ph)
    assert mb.poll("a", 0.0).WhichOneof("body") == "plan"
    mb.upload_masked("a", _hdr(1, 1, pb.STAGE_PLAINTEXT_UPLOAD), 64, b"x" * 24)
    assert d.uploads == {"a": b"x" * 24} and ph.responded == {"a"} and ctx.bytes_in == 24
    assert mb.poll("a", 0.0).WhichOneof("body") == "wait"
    with pytest.raises(ReplayedMessage, match="already answered"):
        mb.upload_masked("a", _hdr(1, 2, pb.STAGE_PLAINTEXT_UPLOAD), 64, b"y" * 24)
    assert d.uploads == {"a": b"x" * 24} and mb.total_bytes_in == 24


def test_a_long_poll_wakes_when_a_phase_opens_and_otherwise_says_why_it_waits(tmp_path):
    mb, _ = _mailbox(describe=lambda: "1/3 clients connected")
    mb.register("a", b"k" * 32)
    t0 = time.monotonic()
    idle = mb.poll("a", 0.2)
    assert idle.wait.reason == "1/3 clients connected" and idle.wait.retry_after_ms > 0
    assert 0.15 <= time.monotonic() - t0 < POLL_S
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("task", mb.poll("a", 60.0)))
    th.start()
    time.sleep(0.1)
    ctx, d, ph = _attempt(tmp_path, 3)
    t1 = time.monotonic()
    mb.open(ctx, d, ph)
    th.join(POLL_S)
    assert not th.is_alive() and got["task"].plan.round == 3 and time.monotonic() - t1 < 1.0


def test_after_the_last_round_pending_notices_then_done_and_downloads_serve_the_published_adapter(tmp_path):
    mb, _ = _mailbox()
    for c in "ab":
        mb.register(c, b"k" * 32)
    ctx, d, ph = _attempt(tmp_path, 1)
    mb.open(ctx, d, ph)
    mb.publish(_ckpt(tmp_path, 1))
    mb.close(ctx, aggregate_ready=pb.AggregateReady(total_size=12))
    mb.finish(pb.Done(final_round=1, reason="all rounds completed"))
    assert not mb.everyone_told_done()
    assert mb.poll("a", 0.0).WhichOneof("body") == "aggregate_ready"
    assert mb.poll("a", 0.0).done.final_round == 1
    assert not mb.everyone_told_done()
    assert mb.poll("b", 0.0).WhichOneof("body") == "aggregate_ready"
    assert mb.poll("b", 0.0).done.reason == "all rounds completed"
    assert mb.everyone_told_done()
    rnd, kind, parts = mb.download("a", _hdr(1, 0, pb.STAGE_AGGREGATE))
    assert (rnd, kind, parts) == (1, pb.AGGREGATE_KIND_GLOBAL_ADAPTER, [b"global adapter 1"])
