"""How the coordinator's run ends, for its members: a signed end of the federation, or nothing.

Members stop only on a ``Done`` the server signed (``securefed.protocol.ending``), and the server
sends one only when the federation is over for good: every round completed, too few members with
budget left, or ``max_attempts`` spent (the reason names the cause). Stopped on request (an upgrade),
a full disk, a crash or a join timeout send nothing: a restart resumes, and members wait for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from securefed.logs import get_logger, log
from securefed.transport._generated import federation_pb2 as pb

if TYPE_CHECKING:  # the coordinator imports this module
    from securefed.server.coordinator import Coordinator

logger = get_logger("server.coordinator")

FINAL_ENDINGS = {"completed": pb.FEDERATION_ENDING_COMPLETED, "budget_exhausted": pb.FEDERATION_ENDING_BUDGET_EXHAUSTED,
                 "gave_up": pb.FEDERATION_ENDING_GAVE_UP}


def conclude(co: Coordinator, rounds: int) -> bool:
    """Settle how the run ended (``co.ending``, ``co.detail``); tell members only if it is for good.
    True when every round completed."""
    with co.lock:
        ok = co.roundlog.completed_rounds() >= rounds
        if co.ending is None:
            co.ending = "completed" if ok else ("stopped" if co._stop.is_set() and not co.error else "failed")
        co.detail = "all rounds completed" if ok else (co.error or "stopped")
        ckpt = co.global_ckpt
        if co.ending in FINAL_ENDINGS:
            co.mailbox.finish(co._seal_end(pb.Done(
                final_round=ckpt.round if ckpt else 0, reason=co.detail, ending=FINAL_ENDINGS[co.ending],
                federation_id=co.config.server.federation_id,
                global_adapter_sha256=bytes.fromhex(ckpt.digest) if ckpt else b"")))
    log(logger, "federation finished" if ok else f"federation ended ({co.ending})",
        level=logging.INFO if ok or co.ending == "stopped" else logging.WARNING,
        completed_rounds=co.roundlog.completed_rounds(), rounds=rounds,
        global_digest=ckpt.digest if ckpt else None, detail=co.detail, members_told=co.ending in FINAL_ENDINGS)
    return ok
