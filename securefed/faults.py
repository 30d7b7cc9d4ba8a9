"""Fault injection for the crash tests: a real ``kill -9`` at a named point of either daemon.

``SECUREFED_FAULT_INJECT="kill@<point>[#attempt],..."`` SIGKILLs the process when it reaches
``<point>`` (in that attempt, if given), so the crash tests exercise exactly the path an operator's
crash does. Unset (always, in production) it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

from securefed.logs import get_logger, log

FAULT_ENV = "SECUREFED_FAULT_INJECT"

logger = get_logger("faults")


def fault_point(name: str, attempt: int | None = None) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        action, _, rest = item.partition("@")
        point, _, when = rest.partition("#")
        if action == "kill" and point == name and (not when or attempt is None or int(when) == attempt):
            log(logger, "fault injection: SIGKILL", point=name, attempt=attempt)
            os.kill(os.getpid(), signal.SIGKILL)
