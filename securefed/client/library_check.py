"""The member's reaction to the library versions a plan expects: decline, or warn once.

The server's plan names the versions of the numerics libraries (torch, transformers, peft, opacus,
bitsandbytes, tenseal) the federation expects. A member running a different major.minor of any of
them computes different numbers: it declines when the federation requires equal versions
(``PLAN_DECLINE_KIND_LIBRARY_VERSIONS``, which the server treats as a reason that cannot change), and
otherwise trains and logs one WARNING per distinct difference (not one per plan). Every release records
the versions it ran in the ledger either way (``DpEvent.library_versions``), so an audit sees them.
"""

from __future__ import annotations

import logging

from securefed import versions
from securefed.client import admission
from securefed.logs import log
from securefed.transport._generated import federation_pb2 as pb

logger = logging.getLogger("securefed.client")


class LibraryVersionCheck:
    def __init__(self, have: dict[str, str] | None = None) -> None:
        self.have = have if have is not None else versions.installed()
        self._warned: set[str] = set()

    def decline_reason(self, plan: pb.RoundPlan) -> str | None:
        reason, warning = admission.library_versions_reason(plan, self.have)
        if warning is not None and warning not in self._warned:
            self._warned.add(warning)
            log(logger, f"{warning}; this member trains anyway (the federation does not require "
                        "equal versions) and its ledger records what it ran", level=logging.WARNING)
        return reason
