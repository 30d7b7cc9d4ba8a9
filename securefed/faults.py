"""Fault injection for the crash tests: a real ``kill -9``, or a full disk, at a named point of either daemon.

``SECUREFED_FAULT_INJECT="kill@<point>[#attempt],..."`` SIGKILLs the process when it reaches
``<point>`` (in that attempt, if given), so the crash tests exercise exactly the path an operator's
crash does. ``fsize:<bytes>@<point>`` instead lowers the process's file size limit (``RLIMIT_FSIZE``)
there: from then on the kernel refuses every write past that many bytes of a file (``EFBIG``), as a
full disk refuses it, without needing one. Unset (always, in production) it costs one environment lookup.
"""

from __future__ import annotations

import os
import resource
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
        if point != name or (when and attempt is not None and int(when) != attempt):
            continue
        if action == "kill":
            log(logger, "fault injection: SIGKILL", point=name, attempt=attempt)
            os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("fsize:"):  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
            limit = int(action.split(":", 1)[1])
            log(logger, "fault injection: file size limit", point=name, attempt=attempt, bytes=limit)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
